//! Paper tables from the run index: rows are sweep cells or named runs, columns are metrics,
//! each cell mean ± std over seeds, the best of each column in bold.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

use crate::config::{Pipeline, Rows, TableDef};
use crate::index::RunMetrics;
use crate::namemap::NameMap;
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

/// One row of a table: its cells' latest runs and their metrics per seed.
#[derive(Debug, Clone)]
pub struct Row {
    pub label: String,
    /// The stage whose metrics fill the row.
    pub stage: String,
    /// (seed, key) of the latest committed run of each of the row's cells.
    pub runs: Vec<(Option<u64>, String)>,
    /// metric → (seed, value) per committed run (a sorted vector: one allocation per row,
    /// where a `BTreeMap` took a 544-byte node; a 100k-row table holds 100k of them).
    pub per_seed: NameMap<Vec<(Option<u64>, f64)>>,
    /// metric → summary over seeds.
    pub values: NameMap<Summary>,
}

/// A table's numbers, before formatting.
#[derive(Debug, Clone)]
pub struct TableData {
    pub rows: Vec<Row>,
    /// metric → the best row mean (the lowest where lower is better).
    pub best: BTreeMap<String, f64>,
    /// Cells (label#seed) with no committed run.
    pub missing: Vec<String>,
    /// The command that computes the missing cells.
    pub command: String,
    /// What a cell's value summarises, e.g. "mean ± std over 3 seeds".
    pub runs_note: String,
}

impl TableData {
    /// Whether `row`'s value of `metric` is the column's best.
    pub fn is_best(&self, metric: &str, row: &Row) -> bool {
        matches!(
            (self.best.get(metric), row.values.get(metric)),
            (Some(b), Some(s)) if *b == s.mean
        )
    }
}

/// Collects `table`'s rows from the index `rows` (latest run per cell and seed).
pub fn compute(
    pipe: &Pipeline,
    registry: &Registry,
    table: &TableDef,
    index: &[RunMetrics],
) -> Result<TableData, PlanError> {
    let plan = Plan::build(pipe, registry, std::slice::from_ref(&table.name))?;
    let mut latest: HashMap<(&str, Option<u64>), &RunMetrics> = HashMap::with_capacity(index.len());
    for r in index {
        latest.insert((r.cell.as_str(), r.seed), r);
    }
    let specs = rows_of(pipe, registry, table)?;
    let mut missing = Vec::new();
    let mut rows = Vec::with_capacity(specs.len());
    for (label, stage, variant) in specs {
        // Sized to the row's seeds and the table's metrics: a 100k-row table holds them all.
        let nodes = plan.find(pipe, &stage, &variant);
        let seeds = nodes.len();
        let mut per_seed: NameMap<Vec<(Option<u64>, f64)>> =
            NameMap::with_capacity(table.metrics.len());
        let mut runs = Vec::with_capacity(seeds);
        for node in nodes {
            match latest.get(&(node.cell.as_str(), node.seed)) {
                Some(r) => {
                    runs.push((r.seed, r.key.clone()));
                    for m in &table.metrics {
                        if let Some(v) = r.metrics.get(m) {
                            let xs = per_seed.get_or_default(m);
                            if xs.capacity() == 0 {
                                xs.reserve_exact(seeds);
                            }
                            xs.push((r.seed, *v));
                        }
                    }
                }
                None => missing.push(node.display()),
            }
        }
        let values = per_seed
            .iter()
            .filter_map(|(m, xs)| {
                let xs: Vec<f64> = xs.iter().map(|(_, v)| *v).collect();
                summarize(&xs).map(|s| (m.clone(), s))
            })
            .collect();
        rows.push(Row {
            label,
            stage,
            runs,
            per_seed,
            values,
        });
    }
    let best = table
        .metrics
        .iter()
        .filter(|m| !table.unranked.contains(*m))
        .filter_map(|m| {
            let lower = table.lower_is_better.contains(m);
            let means = rows.iter().filter_map(|r| r.values.get(m).map(|s| s.mean));
            let b = if lower {
                means.min_by(f64::total_cmp)
            } else {
                means.max_by(f64::total_cmp)
            };
            b.map(|b| (m.clone(), b))
        })
        .collect();
    Ok(TableData {
        runs_note: runs_note(&rows),
        rows,
        best,
        missing,
        command: format!("spo-pipe run {}", table.name),
    })
}

/// The tables of `pipe` whose every cell is in `plan`: those its targets compute.
pub fn computed_by<'p>(
    pipe: &'p Pipeline,
    registry: &Registry,
    plan: &Plan,
) -> Result<Vec<&'p TableDef>, PlanError> {
    let mut out = Vec::new();
    for t in &pipe.tables {
        let tp = Plan::build(pipe, registry, std::slice::from_ref(&t.name))?;
        if tp.nodes.iter().all(|n| plan.get(&n.cell, n.seed).is_some()) {
            out.push(t);
        }
    }
    Ok(out)
}

/// Each row of `table`: its label, the stage whose metrics fill it, and the sweep overrides
/// that pick its cells.
pub fn rows_of(
    pipe: &Pipeline,
    registry: &Registry,
    table: &TableDef,
) -> Result<Vec<(String, String, Variant)>, PlanError> {
    Ok(match &table.rows {
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
    })
}

/// Renders `table` from the index `rows` (latest run per cell and seed).
pub fn render(
    pipe: &Pipeline,
    registry: &Registry,
    table: &TableDef,
    index: &[RunMetrics],
    format: Format,
) -> Result<Rendered, PlanError> {
    let d = compute(pipe, registry, table, index)?;
    let text = match format {
        Format::Md => markdown(table, &d),
        Format::Latex => latex(table, &d),
        Format::Csv => csv(table, &d.rows),
    };
    Ok(Rendered {
        text,
        missing: d.missing,
        command: d.command,
    })
}

fn cell(s: Option<&Summary>, digits: usize, pm: &str) -> String {
    match s {
        Some(s) if s.n > 1 => format!("{:.*}{pm}{:.*}", digits, s.mean, digits, s.std),
        Some(s) => format!("{:.*}", digits, s.mean),
        None => "—".into(),
    }
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

fn markdown(t: &TableDef, d: &TableData) -> String {
    let mut s = format!(
        "**{}**\n\n| | {} |\n|---|{}\n",
        t.title,
        t.metrics.join(" | "),
        "---:|".repeat(t.metrics.len())
    );
    for r in &d.rows {
        let cells: Vec<String> = t
            .metrics
            .iter()
            .map(|m| {
                let v = r.values.get(m);
                let c = cell(v, t.digits, " ± ");
                if d.is_best(m, r) {
                    format!("**{c}**")
                } else {
                    c
                }
            })
            .collect();
        let _ = writeln!(s, "| {} | {} |", r.label, cells.join(" | "));
    }
    let _ = write!(s, "\n{}; best in bold{}.\n", d.runs_note, lower_note(t));
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

fn latex(t: &TableDef, d: &TableData) -> String {
    let mut s = format!(
        "% {}: {}{}\n\\begin{{tabular}}{{l{}}}\n\\toprule\n & {} \\\\\n\\midrule\n",
        latex_escape(&t.title),
        d.runs_note,
        lower_note(t),
        "r".repeat(t.metrics.len()),
        t.metrics
            .iter()
            .map(|m| latex_escape(m))
            .collect::<Vec<_>>()
            .join(" & ")
    );
    for r in &d.rows {
        let cells: Vec<String> = t
            .metrics
            .iter()
            .map(|m| {
                let v = r.values.get(m);
                let c = cell(v, t.digits, " $\\pm$ ").replace('—', "--");
                if d.is_best(m, r) {
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
            stage: "s".into(),
            runs: Vec::new(),
            per_seed: NameMap::default(),
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
