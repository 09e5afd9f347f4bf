//! Training curves: every log whose first column is a step, round or epoch, one plot per
//! logged quantity, the seeds of a cell overlaid in its colour.

use std::collections::BTreeMap;
use std::fmt::Write;

use spo_core::Manifest;

use crate::columns::Column;
use crate::context::Ctx;
use crate::files::{self, Shape};
use crate::html::esc;
use crate::svg::{self, Line};

/// Most points drawn per line (longer logs are averaged down).
const POINTS: usize = 400;
const MAX_ROWS: usize = 10_000_000;

/// One run whose logs are drawn: its colour group, legend name and manifest.
pub struct Member {
    pub group: usize,
    pub name: String,
    pub manifest: Manifest,
}

/// The curves page's body: one section per stage that logs.
pub fn page(cx: &Ctx<'_>) -> String {
    let mut s = String::new();
    let stages = cx.stages();
    for stage in stages {
        let mut cells: Vec<&str> = Vec::new();
        let mut members = Vec::new();
        for (i, n) in cx.plan.nodes.iter().enumerate() {
            if n.stage != stage {
                continue;
            }
            let Some(m) = cx.cells[i].run_key.as_deref().and_then(|k| cx.manifest(k)) else {
                continue;
            };
            if files::with_shape(&m, Shape::Curve).next().is_none() {
                continue;
            }
            let group = cells.iter().position(|c| *c == n.cell).unwrap_or_else(|| {
                cells.push(&n.cell);
                cells.len() - 1
            });
            members.push(Member {
                group,
                name: n.label.clone(),
                manifest: m,
            });
        }
        if members.is_empty() {
            continue;
        }
        let name = &cx.pipe.stages[stage].name;
        let _ = write!(
            s,
            "<h2 id=\"{}\">{}</h2>\n<p class=\"note\">{} run{}; one colour per cell, its seeds overlaid.</p>\n{}",
            esc(name),
            esc(name),
            members.len(),
            if members.len() == 1 { "" } else { "s" },
            plots(cx, &members)
        );
    }
    if s.is_empty() {
        s.push_str("<p class=\"note\">No cell of the targets has a training log yet.</p>");
    }
    s
}

/// One plot per (log file, quantity) over `members`.
pub fn plots(cx: &Ctx<'_>, members: &[Member]) -> String {
    // (file, column) → lines, in first-seen order.
    let mut order: Vec<(String, String, String)> = Vec::new();
    let mut lines: BTreeMap<(String, String), Vec<Line>> = BTreeMap::new();
    for mem in members {
        let dir = cx.store.cell_dir(&mem.manifest.key);
        for f in files::with_shape(&mem.manifest, Shape::Curve) {
            let cols = match files::read_table(&dir, f, MAX_ROWS, true) {
                Ok(c) => c,
                Err(e) => {
                    cx.problem(e);
                    continue;
                }
            };
            let Some(Column::Number(xs)) = cols.columns.first() else {
                continue;
            };
            for (name, col) in cols.names.iter().zip(&cols.columns).skip(1) {
                let Column::Number(ys) = col else { continue };
                let points: Vec<(f64, f64)> = xs
                    .iter()
                    .zip(ys)
                    .filter_map(|(x, y)| Some(((*x)?, (*y)?)))
                    .collect();
                if points.is_empty() {
                    continue;
                }
                let id = (f.path.clone(), name.clone());
                if !lines.contains_key(&id) {
                    order.push((f.path.clone(), name.clone(), cols.names[0].clone()));
                }
                lines.entry(id).or_default().push(Line {
                    group: mem.group,
                    name: mem.name.clone(),
                    points: svg::thin(&points, POINTS),
                });
            }
        }
    }
    let mut s = String::from("<div class=\"plots\">");
    for (file, column, axis) in order {
        let title = format!("{column} ({})", file.trim_end_matches(".parquet"));
        let ls = &lines[&(file, column)];
        s.push_str(&svg::lines(&title, &axis, ls));
    }
    s.push_str("</div>");
    s
}
