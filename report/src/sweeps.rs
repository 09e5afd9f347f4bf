//! The sweeps page: for each table whose rows are a sweep, each metric against the swept param,
//! mean ± std over seeds.

use std::fmt::Write;

use spo_core::{Rows, Value};

use crate::context::Ctx;
use crate::html::esc;
use crate::svg::{self, Bar};

/// The sweeps page's body.
pub fn page(cx: &Ctx<'_>) -> String {
    let mut s = String::new();
    for (t, d) in &cx.tables {
        let Rows::Sweep(name) = &t.rows else { continue };
        let Some(sweep) = cx.pipe.sweep(name) else {
            continue;
        };
        // A numeric axis when every cell sets the same one param to a number.
        let numeric: Option<(String, Vec<f64>)> = {
            let one = |c: &std::collections::BTreeMap<String, Value>| {
                (c.len() == 1)
                    .then(|| c.iter().next())
                    .flatten()
                    .and_then(|(k, v)| {
                        let x = match v {
                            Value::Int(i) => *i as f64,
                            Value::Float(f) => *f,
                            _ => return None,
                        };
                        Some((k.clone(), x))
                    })
            };
            let pts: Option<Vec<(String, f64)>> = sweep.cells.iter().map(one).collect();
            pts.filter(|p| p.windows(2).all(|w| w[0].0 == w[1].0) && !p.is_empty())
                .map(|p| (p[0].0.clone(), p.into_iter().map(|(_, x)| x).collect()))
        };
        let xlabel = numeric.as_ref().map_or_else(
            || format!("{}: sweep `{}`", sweep.stage, sweep.name),
            |(k, _)| format!("{}.{k}", sweep.stage),
        );
        let _ = write!(
            s,
            "<h2 id=\"{}\">{}</h2>\n<p class=\"note\">Sweep <code>{}</code> over stage <code>{}</code>; \
             points are means, bars ± one standard deviation over seeds.</p>\n<div class=\"plots\">",
            esc(&t.name),
            esc(&t.title),
            esc(&sweep.name),
            esc(&sweep.stage)
        );
        for m in &t.metrics {
            let bars: Vec<Bar> = d
                .rows
                .iter()
                .enumerate()
                .filter_map(|(i, r)| {
                    let v = r.values.get(m)?;
                    Some(Bar {
                        x: numeric.as_ref().map_or(i as f64, |(_, xs)| xs[i]),
                        label: match numeric {
                            // The row label is `param=value`.
                            Some(_) => r.label.rsplit('=').next().unwrap_or(&r.label).to_owned(),
                            None => r.label.clone(),
                        },
                        mean: v.mean,
                        lo: v.mean - v.std,
                        hi: v.mean + v.std,
                    })
                })
                .collect();
            if !bars.is_empty() {
                s.push_str(&svg::bars(m, &xlabel, &bars, numeric.is_some()));
            }
        }
        s.push_str("</div>\n");
    }
    if s.is_empty() {
        s.push_str("<p class=\"note\">No table of the targets has a sweep for rows.</p>");
    }
    s
}
