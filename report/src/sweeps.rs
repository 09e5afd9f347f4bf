//! The sweeps page: for each table whose rows are a sweep, each metric against the swept param,
//! mean ± std over seeds.

use std::fmt::Write;

use spo_core::plan::bare;
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
        // One param set by every cell: its values label the axis, placed by value when numbers.
        let param: Option<&String> = sweep
            .cells
            .first()
            .filter(|c| c.len() == 1)
            .and_then(|c| c.keys().next())
            .filter(|k| {
                sweep
                    .cells
                    .iter()
                    .all(|c| c.len() == 1 && c.contains_key(k))
            });
        let values: Vec<Option<&Value>> = sweep
            .cells
            .iter()
            .map(|c| param.and_then(|k| c.get(k)))
            .collect();
        let xs: Option<Vec<f64>> = values
            .iter()
            .map(|v| match v {
                Some(Value::Int(i)) => Some(*i as f64),
                Some(Value::Float(f)) => Some(*f),
                _ => None,
            })
            .collect();
        let xlabel = param.map_or_else(
            || format!("{}: sweep `{}`", sweep.stage, sweep.name),
            |k| format!("{}.{k}", sweep.stage),
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
                        x: xs.as_ref().map_or(i as f64, |xs| xs[i]),
                        label: values[i].map_or_else(|| r.label.clone(), bare),
                        mean: v.mean,
                        lo: v.mean - v.std,
                        hi: v.mean + v.std,
                    })
                })
                .collect();
            if !bars.is_empty() {
                s.push_str(&svg::bars(m, &xlabel, &bars, xs.is_some()));
            }
        }
        s.push_str("</div>\n");
    }
    if s.is_empty() {
        s.push_str("<p class=\"note\">No table of the targets has a sweep for rows.</p>");
    }
    s
}
