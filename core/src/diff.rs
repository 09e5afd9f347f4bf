//! `diff A B`: params and metrics of two cells, with seed statistics.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::Pipeline;
use crate::index::IndexRow;
use crate::plan::{Plan, PlanError, parse_selector};
use crate::registry::Registry;
use crate::stats::{Summary, delta_ci, summarize};

/// One side of a diff: the latest committed run of each seed of one cell.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Side {
    pub selector: String,
    pub label: String,
    pub seeds: Vec<Option<u64>>,
    /// `stage.param` → value (as JSON), over the cell's whole lineage.
    pub params: BTreeMap<String, serde_json::Value>,
    /// metric → (seed, value) per committed seed.
    pub metrics: BTreeMap<String, Vec<(Option<u64>, f64)>>,
}

/// One metric compared.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MetricDiff {
    pub metric: String,
    pub a: Option<Summary>,
    pub b: Option<Summary>,
    /// mean(b) − mean(a).
    pub delta: Option<f64>,
    /// 95% bootstrap interval of the delta over seeds.
    pub ci95: Option<(f64, f64)>,
    /// Whether both sides have the same seeds, so the interval pairs them seed by seed.
    pub paired: bool,
}

/// The whole comparison.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Diff {
    pub a: Side,
    pub b: Side,
    /// `stage.param` → (value in A, value in B), for those that differ.
    pub params: BTreeMap<String, (Option<serde_json::Value>, Option<serde_json::Value>)>,
    pub metrics: Vec<MetricDiff>,
}

/// Finds the index rows of a selector (`stage`, `stage@param=v`, `score@spo.k=3`) or of a key or
/// cell-id prefix (at least 6 hex digits).
pub fn side(
    pipe: &Pipeline,
    registry: &Registry,
    index: &[IndexRow],
    selector: &str,
) -> Result<Side, PlanError> {
    let mut latest: BTreeMap<(String, Option<u64>), &IndexRow> = BTreeMap::new();
    for r in index {
        latest.insert((r.cell.clone(), r.seed), r);
    }
    let hex = selector.len() >= 6 && selector.chars().all(|c| c.is_ascii_hexdigit());
    let cell: String = if hex {
        let hits: BTreeSet<&str> = index
            .iter()
            .filter(|r| r.key.starts_with(selector) || r.cell.starts_with(selector))
            .map(|r| r.cell.as_str())
            .collect();
        match hits.len() {
            1 => hits.into_iter().next().unwrap_or_default().to_owned(),
            0 => {
                return Err(PlanError {
                    message: format!(
                        "no run in the index has a key or cell id starting with `{selector}`"
                    ),
                });
            }
            n => {
                return Err(PlanError {
                    message: format!(
                        "`{selector}` is ambiguous: it matches {n} cells; give more digits"
                    ),
                });
            }
        }
    } else {
        let (stage, variant) = parse_selector(pipe, registry, selector)?;
        let sel = if variant.is_empty() {
            stage.clone()
        } else {
            selector.to_owned()
        };
        let plan = Plan::build(pipe, registry, &[sel])?;
        let nodes = plan.find(pipe, &stage, &variant);
        let Some(n) = nodes.first() else {
            return Err(PlanError {
                message: format!("`{selector}` names no cell"),
            });
        };
        n.cell.clone()
    };
    let runs: Vec<&IndexRow> = latest
        .iter()
        .filter(|((c, _), _)| *c == cell)
        .map(|(_, r)| *r)
        .collect();
    let Some(first) = runs.first() else {
        return Err(PlanError {
            message: format!(
                "`{selector}` has no committed run; run `spo-pipe run {selector}` first"
            ),
        });
    };
    let mut metrics: BTreeMap<String, Vec<(Option<u64>, f64)>> = BTreeMap::new();
    for r in &runs {
        for (m, v) in &r.metrics {
            metrics.entry(m.clone()).or_default().push((r.seed, *v));
        }
    }
    let mut params = BTreeMap::new();
    if let Ok(serde_json::Value::Object(lineage)) =
        serde_json::from_str::<serde_json::Value>(&first.lineage)
    {
        for (stage, ps) in lineage {
            if let serde_json::Value::Object(ps) = ps {
                for (k, v) in ps {
                    params.insert(format!("{stage}.{k}"), v);
                }
            }
        }
    }
    Ok(Side {
        selector: selector.to_owned(),
        label: first.label.clone(),
        seeds: runs.iter().map(|r| r.seed).collect(),
        params,
        metrics,
    })
}

/// Compares two sides.
pub fn diff(a: Side, b: Side) -> Diff {
    let mut params = BTreeMap::new();
    for k in a.params.keys().chain(b.params.keys()) {
        let (va, vb) = (a.params.get(k), b.params.get(k));
        if va != vb {
            params.insert(k.clone(), (va.cloned(), vb.cloned()));
        }
    }
    let names: BTreeSet<&String> = a.metrics.keys().chain(b.metrics.keys()).collect();
    let metrics = names
        .into_iter()
        .map(|m| {
            let (pa, pb) = (
                a.metrics.get(m).map_or(&[][..], Vec::as_slice),
                b.metrics.get(m).map_or(&[][..], Vec::as_slice),
            );
            let values = |p: &[(Option<u64>, f64)]| p.iter().map(|(_, v)| *v).collect::<Vec<f64>>();
            let (sa, sb) = (summarize(&values(pa)), summarize(&values(pb)));
            let (ci95, paired) = delta_ci(pa, pb);
            MetricDiff {
                metric: m.clone(),
                a: sa,
                b: sb,
                delta: sa.zip(sb).map(|(x, y)| y.mean - x.mean),
                ci95,
                paired,
            }
        })
        .collect();
    Diff {
        a,
        b,
        params,
        metrics,
    }
}
