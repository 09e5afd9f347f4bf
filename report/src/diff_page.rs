//! `spo-pipe diff A B --html`: one self-contained page comparing two cells.

use std::fmt::Write;

use spo_core::diff::Diff;
use spo_core::stats::Summary;

use crate::html::{ICON, STYLE, esc};

/// The comparison of `d` as one HTML page with its style inline.
pub fn render(pipeline: &str, d: &Diff) -> String {
    let mut s = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{a} vs {b} · {p}</title>\
         <link rel=\"icon\" href=\"{ICON}\"><style>{STYLE}</style></head><body><nav><b>spo-pipe diff</b> · {p}</nav><main>\
         <h1>A = {a} ({na} seeds) · B = {b} ({nb} seeds)</h1>\n",
        a = esc(&d.a.label),
        b = esc(&d.b.label),
        p = esc(pipeline),
        na = d.a.seeds.len(),
        nb = d.b.seeds.len()
    );
    s.push_str("<h2>Params that differ</h2>");
    if d.params.is_empty() {
        s.push_str("<p>None: the two cells have the same params over their whole lineage.</p>");
    } else {
        s.push_str("<table><tr><th class=\"l\">stage.param</th><th class=\"l\">A</th><th class=\"l\">B</th></tr>");
        let v = |x: &Option<serde_json::Value>| {
            x.as_ref()
                .map_or_else(|| "(unset)".to_owned(), ToString::to_string)
        };
        for (k, (a, b)) in &d.params {
            let _ = write!(
                s,
                "<tr><td class=\"l\">{}</td><td class=\"l\"><code>{}</code></td><td class=\"l\"><code>{}</code></td></tr>",
                esc(k),
                esc(&v(a)),
                esc(&v(b))
            );
        }
        s.push_str("</table>");
    }
    s.push_str(
        "<h2>Metrics</h2><table class=\"results\"><tr><th class=\"l\">metric</th><th>A mean ± std (n)</th>\
         <th>B mean ± std (n)</th><th>B − A</th><th>95% CI of B − A</th></tr>",
    );
    let f = |x: &Option<Summary>| {
        x.map_or("—".to_owned(), |x| {
            format!("{:.4} ± {:.4} ({})", x.mean, x.std, x.n)
        })
    };
    for m in &d.metrics {
        let (ci, class) = match m.ci95 {
            Some((lo, hi)) => (
                format!(
                    "[{lo:+.4}, {hi:+.4}]{}",
                    if m.paired { " paired" } else { "" }
                ),
                if lo > 0.0 || hi < 0.0 { "dec" } else { "" },
            ),
            None => ("—".into(), ""),
        };
        let _ = write!(
            s,
            "<tr data-metric=\"{}\"><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{class}\">{}</td></tr>",
            esc(&m.metric),
            esc(&m.metric),
            f(&m.a),
            f(&m.b),
            m.delta.map_or("—".to_owned(), |x| format!("{x:+.4}")),
            esc(&ci)
        );
    }
    s.push_str("</table><p class=\"note\">Intervals are 95% bootstrap intervals over seeds (2,000 resamples), paired seed by seed when both cells have the same seeds; green where the interval excludes 0.</p></main></body></html>\n");
    s
}
