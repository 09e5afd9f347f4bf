//! Expanding targets into a DAG of cells.
//!
//! A *cell* is one instance of a stage: the stage's params with a sweep's overrides applied to
//! it or to a stage upstream of it (its *variant*), plus, for seeded kinds and everything
//! downstream of them, one seed of the pipeline's seed axis. A cell's id hashes its
//! configuration (kind, params, the ids of its input cells) and leaves out the seed and the code
//! version, so results group over seeds and `why` can find the last run of a cell after a
//! version bump. Nodes come out in topological order.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};

use crate::config::{Pipeline, Rows};
use crate::config_error::unknown_hint;
use crate::key::cell_id;
use crate::namemap::NameMap;
use crate::param::{Params, Value};
use crate::registry::Registry;

/// Param overrides per stage: the sweep cell a node belongs to (each stage's overrides shared
/// with the sweep's definition).
pub type Variant = NameMap<Arc<NameMap<Value>>>;

/// One cell to compute.
#[derive(Debug, Clone)]
pub struct Node {
    /// Index into `Pipeline::stages`.
    pub stage: usize,
    /// Shared by the nodes of one stage.
    pub stage_name: Arc<str>,
    pub kind: Arc<str>,
    /// The overrides of this node's lineage (only stages it depends on, itself included);
    /// shared by the nodes of one sweep cell.
    pub variant: Arc<Variant>,
    pub seed: Option<u64>,
    /// Shared with the stage's definition where no sweep overrides it.
    pub params: Arc<Params>,
    /// Node ids of its inputs, in the order of `needs`.
    pub inputs: Vec<usize>,
    /// The configuration identity (hex SHA-256), seed excluded.
    pub cell: String,
    /// For people: `score[spo.k=3]`.
    pub label: String,
}

impl Node {
    /// The label with the seed, e.g. `spo[k=3]#1`.
    pub fn display(&self) -> String {
        match self.seed {
            Some(s) => format!("{}#{s}", self.label),
            None => self.label.clone(),
        }
    }
}

/// Why a target could not be expanded.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct PlanError {
    pub message: String,
}

/// The expanded DAG of some targets.
#[derive(Debug, Default, Clone)]
pub struct Plan {
    pub nodes: Vec<Node>,
    /// Node ids by the leading 64 bits of their cell id, and seed; a later cell sharing those
    /// bits with another (never seen: they are SHA-256 bits) goes in `by_id_rest`.
    by_id: HashMap<(u64, Option<u64>), usize>,
    by_id_rest: HashMap<(String, Option<u64>), usize>,
    /// Per stage index (an entry for every stage that has nodes), its node ids by canonical
    /// variant, built on the first [`Plan::find`] of that stage: a table reads one stage of a
    /// plan whose other stages may hold as many nodes.
    by_variant: Vec<OnceLock<ByVariant>>,
}

type ByVariant = HashMap<Vec<u8>, Vec<usize>>;

impl Plan {
    /// Expands `targets` (stage, sweep, table or target names, or selectors like
    /// `score@spo.k=3`); an empty list means the pipeline's default targets, or every stage.
    pub fn build(
        pipe: &Pipeline,
        registry: &Registry,
        targets: &[String],
    ) -> Result<Plan, PlanError> {
        let mut b = Builder::new(pipe, registry);
        let defaults: Vec<String> = if pipe.default_targets.is_empty() {
            pipe.stages.iter().map(|s| s.name.clone()).collect()
        } else {
            pipe.default_targets.clone()
        };
        for t in if targets.is_empty() {
            &defaults
        } else {
            targets
        } {
            b.target(t, 0)?;
        }
        Ok(b.plan)
    }

    /// The nodes of `stage` under exactly the given variant (restricted to its lineage), one per seed.
    pub fn find(&self, pipe: &Pipeline, stage: &str, variant: &Variant) -> Vec<&Node> {
        let Some(si) = pipe.stage_index(stage) else {
            return vec![];
        };
        let Some(index) = self.by_variant.get(si) else {
            return vec![];
        };
        let index = index.get_or_init(|| {
            let mut m = ByVariant::new();
            for (i, n) in self.nodes.iter().enumerate().filter(|(_, n)| n.stage == si) {
                m.entry(encode_variant(n.variant.iter()))
                    .or_default()
                    .push(i);
            }
            m
        });
        // The entries that can affect the stage, as `restrict` keeps them.
        let name = &pipe.stages[si].name;
        let restricted = variant
            .iter()
            .filter(|(s, _)| crate::config::depends_on(pipe, name, s));
        index
            .get(&encode_variant(restricted))
            .map_or(vec![], |ids| ids.iter().map(|&i| &self.nodes[i]).collect())
    }

    /// The node with this cell id and seed.
    pub fn get(&self, cell: &str, seed: Option<u64>) -> Option<usize> {
        match self.by_id.get(&(leading_bits(cell), seed)) {
            Some(&id) if self.nodes[id].cell == cell => Some(id),
            _ => self.by_id_rest.get(&(cell.to_owned(), seed)).copied(),
        }
    }

    fn insert_id(&mut self, id: usize) {
        let (stage, cell, seed) = (
            self.nodes[id].stage,
            &self.nodes[id].cell,
            self.nodes[id].seed,
        );
        if self.by_variant.len() <= stage {
            self.by_variant.resize_with(stage + 1, OnceLock::new);
        }
        match self.by_id.entry((leading_bits(cell), seed)) {
            Entry::Vacant(v) => {
                v.insert(id);
            }
            Entry::Occupied(_) => {
                self.by_id_rest.insert((cell.clone(), seed), id);
            }
        }
    }

    /// Every node that transitively feeds `id`, itself included, in topological order.
    pub fn lineage(&self, id: usize) -> Vec<usize> {
        let mut keep = HashSet::new();
        let mut stack = vec![id];
        while let Some(n) = stack.pop() {
            if keep.insert(n) {
                stack.extend(&self.nodes[n].inputs);
            }
        }
        // Inputs come before the nodes that read them, so id order is topological.
        let mut ids: Vec<usize> = keep.into_iter().collect();
        ids.sort_unstable();
        ids
    }
}

/// A parsed selector `stage@[stage2.]param=value,...`.
pub fn parse_selector(
    pipe: &Pipeline,
    registry: &Registry,
    sel: &str,
) -> Result<(String, Variant), PlanError> {
    let (stage, rest) = sel.split_once('@').unwrap_or((sel, ""));
    let err = |m: String| PlanError { message: m };
    let Some(def) = pipe.stage(stage) else {
        let names: Vec<&str> = pipe.stages.iter().map(|s| s.name.as_str()).collect();
        return Err(err(format!(
            "`{sel}`: no stage named `{stage}` ({})",
            unknown_hint(stage, &names, "pipeline")
        )));
    };
    let mut variant = Variant::new();
    for part in rest.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((path, value)) = part.split_once('=') else {
            return Err(err(format!("`{sel}`: `{part}` is not `param=value`")));
        };
        let (on, param) = match path.split_once('.') {
            Some((s, p)) => (s.trim(), p.trim()),
            None => (def.name.as_str(), path.trim()),
        };
        let Some(on_def) = pipe.stage(on) else {
            return Err(err(format!("`{sel}`: no stage named `{on}`")));
        };
        if !crate::config::depends_on(pipe, stage, on) {
            return Err(err(format!(
                "`{sel}`: stage `{stage}` does not depend on `{on}`, so `{on}.{param}` cannot change it"
            )));
        }
        let specs = registry.params(&on_def.kind);
        let Some(spec) = specs.iter().find(|s| s.name == param) else {
            let names: Vec<&str> = specs.iter().map(|s| s.name).collect();
            return Err(err(format!(
                "`{sel}`: unknown param `{param}` for kind `{}` ({})",
                on_def.kind,
                unknown_hint(param, &names, "kind")
            )));
        };
        // A bare word is a string, so `spo@continuation=win` needs no quotes.
        let v = match toml::de::DeValue::parse(value.trim()) {
            Ok(parsed) => toml_to_value(parsed.get_ref())
                .ok_or_else(|| err(format!("`{sel}`: `{value}` is not a param value")))?,
            Err(_) => Value::Str(value.trim().to_owned()),
        };
        let v = spec
            .check(&v)
            .map_err(|m| err(format!("`{sel}`: param `{param}`: {m}")))?;
        Arc::make_mut(variant.get_or_default(on)).insert(param.to_owned(), v);
    }
    Ok((stage.to_owned(), variant))
}

fn toml_to_value(v: &toml::de::DeValue<'_>) -> Option<Value> {
    use toml::de::DeValue as D;
    Some(match v {
        D::String(s) => Value::Str(s.to_string()),
        D::Integer(i) => {
            Value::Int(i64::from_str_radix(&i.as_str().replace('_', ""), i.radix()).ok()?)
        }
        D::Float(f) => Value::Float(f.as_str().replace('_', "").parse().ok()?),
        D::Boolean(b) => Value::Bool(*b),
        D::Array(items) => Value::List(
            items
                .iter()
                .map(|i| toml_to_value(i.get_ref()))
                .collect::<Option<_>>()?,
        ),
        _ => return None,
    })
}

/// The first 16 hex digits of a cell id as a number (0 for anything else).
fn leading_bits(cell: &str) -> u64 {
    cell.get(..16)
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .unwrap_or(0)
}

/// The canonical bytes of a variant's entries, for hashing (equal values, equal bytes).
fn encode_variant<'v>(
    entries: impl Iterator<Item = (&'v String, &'v Arc<NameMap<Value>>)>,
) -> Vec<u8> {
    let mut out = Vec::new();
    for (stage, ov) in entries {
        out.extend_from_slice(&(stage.len() as u64).to_le_bytes());
        out.extend_from_slice(stage.as_bytes());
        let ov = crate::config::encode_overrides(ov);
        out.extend_from_slice(&(ov.len() as u64).to_le_bytes());
        out.extend_from_slice(&ov);
    }
    out
}

/// The variant entries that can affect stage `si` (itself and its ancestors): `variant`
/// itself when they all can.
fn restrict(pipe: &Pipeline, si: usize, variant: &Arc<Variant>) -> Arc<Variant> {
    let name = &pipe.stages[si].name;
    let affects = |s: &String| crate::config::depends_on(pipe, name, s);
    if variant.keys().all(affects) {
        return Arc::clone(variant);
    }
    Arc::new(
        variant
            .iter()
            .filter(|(s, _)| affects(s))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    )
}

/// The nodes instantiated under one target variant, by (stage, seed): every stage's
/// restriction of that variant is fixed, so each is built once however many nodes read it.
type Built = HashMap<(usize, Option<u64>), usize>;

struct Builder<'a> {
    pipe: &'a Pipeline,
    registry: &'a Registry,
    seed_dep: Vec<bool>,
    /// Each stage's params as defined, shared by its nodes that no sweep overrides.
    params: Vec<Arc<Params>>,
    /// Each stage's name and kind, shared by its nodes.
    names: Vec<(Arc<str>, Arc<str>)>,
    plan: Plan,
}

impl<'a> Builder<'a> {
    fn new(pipe: &'a Pipeline, registry: &'a Registry) -> Self {
        // Stages come validated and acyclic; resolve seed dependence in dependency order.
        let mut seed_dep: Vec<Option<bool>> = vec![None; pipe.stages.len()];
        fn dep(i: usize, pipe: &Pipeline, reg: &Registry, memo: &mut Vec<Option<bool>>) -> bool {
            if let Some(d) = memo[i] {
                return d;
            }
            let s = &pipe.stages[i];
            let own = reg.get(&s.kind).is_some_and(|k| k.seeded());
            let d = own
                || s.needs
                    .iter()
                    .filter_map(|n| pipe.stage_index(n))
                    .collect::<Vec<_>>()
                    .into_iter()
                    .any(|j| dep(j, pipe, reg, memo));
            memo[i] = Some(d);
            d
        }
        for i in 0..pipe.stages.len() {
            dep(i, pipe, registry, &mut seed_dep);
        }
        Builder {
            pipe,
            registry,
            seed_dep: seed_dep.into_iter().map(|d| d.unwrap_or(false)).collect(),
            params: pipe
                .stages
                .iter()
                .map(|s| Arc::new(s.params.clone()))
                .collect(),
            names: pipe
                .stages
                .iter()
                .map(|s| (Arc::from(s.name.as_str()), Arc::from(s.kind.as_str())))
                .collect(),
            plan: Plan::default(),
        }
    }

    fn seeds(&self, si: usize) -> Vec<Option<u64>> {
        if self.seed_dep[si] {
            self.pipe.seeds.iter().map(|&s| Some(s)).collect()
        } else {
            vec![None]
        }
    }

    fn target(&mut self, t: &str, depth: usize) -> Result<(), PlanError> {
        if depth > 64 {
            return Err(PlanError {
                message: format!("target `{t}` nests too deeply"),
            });
        }
        let pipe = self.pipe;
        let mut built = Built::new();
        if t.contains('@') {
            let (stage, variant) = parse_selector(pipe, self.registry, t)?;
            let si = pipe.stage_index(&stage).unwrap_or(0);
            let variant = Arc::new(variant);
            for seed in self.seeds(si) {
                self.instantiate(si, &variant, seed, &mut built);
            }
        } else if let Some(si) = pipe.stage_index(t) {
            let variant = Arc::new(Variant::new());
            for seed in self.seeds(si) {
                self.instantiate(si, &variant, seed, &mut built);
            }
        } else if let Some(sw) = pipe.sweep(t) {
            let downstream: Vec<usize> = (0..pipe.stages.len())
                .filter(|&i| crate::config::depends_on(pipe, &pipe.stages[i].name, &sw.stage))
                .collect();
            self.sweep(sw, &downstream, &mut built);
        } else if let Some(table) = pipe.table(t) {
            match &table.rows {
                // a sweep table needs its stage's cells (and their inputs) per sweep cell, not
                // everything downstream of the swept stage
                Rows::Sweep(s) => match (pipe.sweep(s), table.stage.as_deref()) {
                    (Some(sw), Some(stage)) => {
                        let si = pipe.stage_index(stage).into_iter().collect::<Vec<_>>();
                        self.sweep(sw, &si, &mut built);
                    }
                    _ => self.target(s, depth + 1)?,
                },
                Rows::Named(rows) => {
                    for (_, sel) in rows {
                        self.target(sel, depth + 1)?;
                    }
                }
            }
        } else if let Some(includes) = pipe.target(t) {
            for inc in includes {
                self.target(inc, depth + 1)?;
            }
        } else {
            let names = pipe.target_names();
            return Err(PlanError {
                message: format!(
                    "unknown target `{t}` ({})",
                    unknown_hint(t, &names, "pipeline")
                ),
            });
        }
        Ok(())
    }

    /// The nodes of `stages` (and their inputs) under each cell of sweep `sw`, one per seed.
    fn sweep(&mut self, sw: &crate::config::SweepDef, stages: &[usize], built: &mut Built) {
        for cell in &sw.cells {
            let variant: Arc<Variant> = Arc::new([(sw.stage.clone(), cell.clone())].into());
            built.clear();
            for &d in stages {
                for seed in self.seeds(d) {
                    self.instantiate(d, &variant, seed, built);
                }
            }
        }
    }

    /// The node of stage `si` under `variant` (restricted to its lineage) and `seed`, and of
    /// each of its inputs; `built` holds those already made under this same `variant`.
    fn instantiate(
        &mut self,
        si: usize,
        variant: &Arc<Variant>,
        seed: Option<u64>,
        built: &mut Built,
    ) -> usize {
        if let Some(&id) = built.get(&(si, seed)) {
            return id;
        }
        let pipe = self.pipe;
        let def = &pipe.stages[si];
        let restricted = restrict(pipe, si, variant);
        let own_seed = if self.seed_dep[si] { seed } else { None };
        let mut inputs = Vec::with_capacity(def.needs.len());
        for ni in def.needs.iter().filter_map(|n| pipe.stage_index(n)) {
            inputs.push(self.instantiate(ni, &restricted, seed, built));
        }
        let params = match restricted.get(&def.name) {
            Some(ov) => {
                let mut params = def.params.clone();
                for (k, v) in ov.iter() {
                    params.0.insert(k.clone(), v.clone());
                }
                params.0.shrink_to_fit();
                Arc::new(params)
            }
            None => Arc::clone(&self.params[si]),
        };
        let cell = cell_id(
            &def.name,
            &def.kind,
            &params,
            inputs.iter().map(|&i| self.plan.nodes[i].cell.as_str()),
        );
        if let Some(id) = self.plan.get(&cell, own_seed) {
            built.insert((si, seed), id);
            return id;
        }
        let label = label(&def.name, &restricted);
        let id = self.plan.nodes.len();
        self.plan.nodes.push(Node {
            stage: si,
            stage_name: Arc::clone(&self.names[si].0),
            kind: Arc::clone(&self.names[si].1),
            variant: restricted,
            seed: own_seed,
            params,
            inputs,
            cell: cell.clone(),
            label,
        });
        self.plan.insert_id(id);
        built.insert((si, seed), id);
        id
    }
}

/// `stage[k=3]` for its own overrides, `stage[up.k=3]` for an upstream stage's.
pub fn label(stage: &str, variant: &Variant) -> String {
    if variant.is_empty() {
        return stage.to_owned();
    }
    let parts: Vec<String> = variant
        .iter()
        .flat_map(|(s, ov)| {
            ov.iter().map(move |(k, v)| {
                let v = bare(v);
                if s == stage {
                    format!("{k}={v}")
                } else {
                    format!("{s}.{k}={v}")
                }
            })
        })
        .collect();
    format!("{stage}[{}]", parts.join(","))
}

/// A value as written in a label or selector: strings without quotes.
pub fn bare(v: &Value) -> String {
    match v {
        Value::Str(s) => s.clone(),
        Value::List(items) => format!("[{}]", items.iter().map(bare).collect::<Vec<_>>().join(",")),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(cell: &str, seed: Option<u64>) -> Node {
        Node {
            stage: 0,
            stage_name: "s".into(),
            kind: "k".into(),
            variant: Arc::default(),
            seed,
            params: Arc::default(),
            inputs: vec![],
            cell: cell.into(),
            label: "s".into(),
        }
    }

    #[test]
    fn cells_sharing_leading_bits_are_told_apart() {
        let same = "0123456789abcdef";
        let (a, b) = (
            format!("{same}{}", "0".repeat(48)),
            format!("{same}{}", "1".repeat(48)),
        );
        let mut plan = Plan::default();
        for n in [
            node(&a, None),
            node(&b, None),
            node(&b, Some(1)),
            node("xyz", None),
        ] {
            plan.nodes.push(n);
            plan.insert_id(plan.nodes.len() - 1);
        }
        assert_eq!(plan.get(&a, None), Some(0));
        assert_eq!(plan.get(&b, None), Some(1));
        assert_eq!(plan.get(&b, Some(1)), Some(2));
        assert_eq!(plan.get("xyz", None), Some(3));
        assert_eq!(plan.get(&a, Some(1)), None);
        assert_eq!(plan.get(&"2".repeat(64), None), None);
    }
}
