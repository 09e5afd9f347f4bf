//! Paper tables from the run index: rows are sweep cells or named runs, columns are metrics,
//! each cell mean ± std over seeds, the best of each column in bold.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::config::{Pipeline, Rows, TableDef};
use crate::index::IndexRow;
use crate::plan::{Plan, PlanError, Variant, bare, parse_selector};
use crate::registry::Registry;
use crate::stats::{Summary, summarize};

/// Output format of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Md,
    Latex,
    Csv,
}

/// A rendered table and what it lacks.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub text: String,
    /// Cells (label#seed) with no committed run; each needs `command`.
    pub missing: Vec<String>,
    /// The command that computes the missing cells.
    pub command: String,
}

struct Row {
    label: String,
    /// metric → summary over seeds.
    values: BTreeMap<String, Summary>,
}

/// Renders `table` from the index `rows` (latest run per cell and seed).
pub fn render(
    pipe: &Pipeline,
    registry: &Registry,
    table: &TableDef,
    index: &[IndexRow],
    format: Format,
) -> Result<Rendered, PlanError> {
    let plan = Plan::build(pipe, registry, std::slice::from_ref(&table.name))?;
    let mut latest: BTreeMap<(&str, Option<u64>), &IndexRow> = BTreeMap::new();
    for r in index {
        latest.insert((r.cell.as_str(), r.seed), r);
    }
    let specs: Vec<(String, String, Variant)> = match &table.rows {
        Rows::Sweep(s) => {
            let sweep = pipe.sweep(s).ok_or_else(|| PlanError {
                message: format!("no sweep `{s}`"),
            })?;
            let stage = table.stage.clone().unwrap_or_else(|| sweep.stage.clone());
            sweep
                .cells
                .iter()
                .map(|c| {
                    (
                        c.iter()
                            .map(|(k, v)| format!("{k}={}", bare(v)))
                            .collect::<Vec<_>>()
                            .join(", "),
                        stage.clone(),
                        [(sweep.stage.clone(), c.clone())].into(),
                    )
                })
                .collect()
        }
        Rows::Named(rows) => rows
            .iter()
            .map(|(label, sel)| {
                parse_selector(pipe, registry, sel).map(|(stage, v)| (label.clone(), stage, v))
            })
            .collect::<Result<_, _>>()?,
    };
    let mut missing = Vec::new();
    let mut out_rows = Vec::new();
    for (label, stage, variant) in specs {
        let mut per_metric: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for node in plan.find(pipe, &stage, &variant) {
            match latest.get(&(node.cell.as_str(), node.seed)) {
                Some(r) => {
                    for m in &table.metrics {
                        if let Some(v) = r.metrics.get(m) {
                            per_metric.entry(m.clone()).or_default().push(*v);
                        }
                    }
                }
                None => missing.push(node.display()),
            }
        }
        let values = per_metric
            .iter()
            .filter_map(|(m, xs)| summarize(xs).map(|s| (m.clone(), s)))
            .collect();
        out_rows.push(Row { label, values });
    }
    let best: BTreeMap<&str, f64> = table
        .metrics
        .iter()
        .filter_map(|m| {
            let lower = table.lower_is_better.contains(m);
            let means = out_rows
                .iter()
                .filter_map(|r| r.values.get(m).map(|s| s.mean));
            let b = if lower {
                means.min_by(f64::total_cmp)
            } else {
                means.max_by(f64::total_cmp)
            };
            b.map(|b| (m.as_str(), b))
        })
        .collect();
    let runs = runs_note(&out_rows);
    let text = match format {
        Format::Md => markdown(table, &out_rows, &best, &runs),
        Format::Latex => latex(table, &out_rows, &best, &runs),
        Format::Csv => csv(table, &out_rows),
    };
    Ok(Rendered {
        text,
        missing,
        command: format!("spo-pipe run {}", table.name),
    })
}

fn cell(s: Option<&Summary>, digits: usize, pm: &str) -> String {
    match s {
        Some(s) if s.n > 1 => format!("{:.*}{pm}{:.*}", digits, s.mean, digits, s.std),
        Some(s) => format!("{:.*}", digits, s.mean),
        None => "—".into(),
    }
}

fn is_best(best: &BTreeMap<&str, f64>, m: &str, s: Option<&Summary>) -> bool {
    matches!((best.get(m), s), (Some(b), Some(s)) if *b == s.mean)
}

/// What a cell's value summarises, from the runs behind the cells: an unseeded stage's row is
/// one run, not a mean over the pipeline's seeds.
fn runs_note(rows: &[Row]) -> String {
    let ns: std::collections::BTreeSet<usize> = rows
        .iter()
        .flat_map(|r| r.values.values().map(|s| s.n))
        .collect();
    match (ns.first(), ns.last()) {
        (Some(&lo), Some(&hi)) if hi > 1 && lo == hi => format!("mean ± std over {hi} seeds"),
        (Some(&lo), Some(&hi)) if hi > 1 => {
            format!("mean ± std over {lo} to {hi} seeds per cell (one run: no ±)")
        }
        _ => "one run per cell".into(),
    }
}

fn markdown(t: &TableDef, rows: &[Row], best: &BTreeMap<&str, f64>, runs: &str) -> String {
    let mut s = format!(
        "**{}**\n\n| | {} |\n|---|{}\n",
        t.title,
        t.metrics.join(" | "),
        "---:|".repeat(t.metrics.len())
    );
    for r in rows {
        let cells: Vec<String> = t
            .metrics
            .iter()
            .map(|m| {
                let v = r.values.get(m);
                let c = cell(v, t.digits, " ± ");
                if is_best(best, m, v) {
                    format!("**{c}**")
                } else {
                    c
                }
            })
            .collect();
        let _ = writeln!(s, "| {} | {} |", r.label, cells.join(" | "));
    }
    let _ = write!(s, "\n{runs}; best in bold{}.\n", lower_note(t));
    s
}

fn lower_note(t: &TableDef) -> String {
    if t.lower_is_better.is_empty() {
        String::new()
    } else {
        format!(
            " (lower is better for {})",
            t.lower_is_better
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

fn latex_escape(s: &str) -> String {
    s.replace('\\', "\\textbackslash{}")
        .replace('&', "\\&")
        .replace('%', "\\%")
        .replace('_', "\\_")
        .replace('#', "\\#")
        .replace('$', "\\$")
}

fn latex(t: &TableDef, rows: &[Row], best: &BTreeMap<&str, f64>, runs: &str) -> String {
    let mut s = format!(
        "% {}: {}{}\n\\begin{{tabular}}{{l{}}}\n\\toprule\n & {} \\\\\n\\midrule\n",
        latex_escape(&t.title),
        runs,
        lower_note(t),
        "r".repeat(t.metrics.len()),
        t.metrics
            .iter()
            .map(|m| latex_escape(m))
            .collect::<Vec<_>>()
            .join(" & ")
    );
    for r in rows {
        let cells: Vec<String> = t
            .metrics
            .iter()
            .map(|m| {
                let v = r.values.get(m);
                let c = cell(v, t.digits, " $\\pm$ ").replace('—', "--");
                if is_best(best, m, v) {
                    format!("\\textbf{{{c}}}")
                } else {
                    c
                }
            })
            .collect();
        let _ = writeln!(s, "{} & {} \\\\", latex_escape(&r.label), cells.join(" & "));
    }
    s.push_str("\\bottomrule\n\\end{tabular}\n");
    s
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn csv(t: &TableDef, rows: &[Row]) -> String {
    let mut s = String::from("row");
    for m in &t.metrics {
        let _ = write!(s, ",{m}_mean,{m}_std,{m}_n");
    }
    s.push('\n');
    for r in rows {
        s.push_str(&csv_field(&r.label));
        for m in &t.metrics {
            match r.values.get(m) {
                Some(v) => {
                    let _ = write!(s, ",{},{},{}", v.mean, v.std, v.n);
                }
                None => s.push_str(",,,0"),
            }
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(ns: &[usize]) -> Row {
        Row {
            label: "r".into(),
            values: ns
                .iter()
                .enumerate()
                .map(|(i, &n)| {
                    let xs: Vec<f64> = (0..n).map(|k| k as f64).collect();
                    (format!("m{i}"), summarize(&xs).expect("n > 0"))
                })
                .collect(),
        }
    }

    #[test]
    fn the_footnote_counts_the_runs_behind_the_cells_not_the_pipelines_seeds() {
        assert_eq!(runs_note(&[row(&[1]), row(&[1, 1])]), "one run per cell");
        assert_eq!(
            runs_note(&[row(&[3]), row(&[3])]),
            "mean ± std over 3 seeds"
        );
        assert_eq!(
            runs_note(&[row(&[3]), row(&[1])]),
            "mean ± std over 1 to 3 seeds per cell (one run: no ±)"
        );
        assert_eq!(runs_note(&[]), "one run per cell");
    }
}
