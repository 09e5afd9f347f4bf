//! pipeline.toml: stages, sweeps, seeds, targets and tables, validated against the stage kinds.
//!
//! Parsing keeps every span, so each problem (malformed TOML, unknown kind, unknown / mistyped /
//! out-of-range param, a `needs` that names nothing, a cycle) is reported at its file, line and
//! column with a hint on how to fix it.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ops::Range;
use std::sync::Arc;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::config_error::{ConfigError, Source, unknown_hint};
use crate::namemap::NameMap;
use crate::param::{ParamSpec, Params, Value};
use crate::registry::Registry;

/// One `[stage.NAME]`.
#[derive(Debug, Clone)]
pub struct StageDef {
    pub name: String,
    pub kind: String,
    pub needs: Vec<String>,
    /// Resolved params: declared values over the kind's defaults.
    pub params: Params,
}

/// One `[sweep.NAME]`: the cells it adds to one stage, each a set of param overrides.
#[derive(Debug, Clone)]
pub struct SweepDef {
    pub name: String,
    pub stage: String,
    /// Each cell's overrides, shared with the plan nodes of that cell.
    pub cells: Vec<Arc<NameMap<Value>>>,
}

/// What the rows of a table are.
#[derive(Debug, Clone)]
pub enum Rows {
    /// One row per cell of a sweep.
    Sweep(String),
    /// Named rows, each the base cell of a stage (or a selector such as `score@spo.k=3`).
    Named(Vec<(String, String)>),
}

/// One `[table.NAME]`.
#[derive(Debug, Clone)]
pub struct TableDef {
    pub name: String,
    pub title: String,
    pub rows: Rows,
    /// The stage whose metrics fill the columns of sweep rows (named rows name their own).
    pub stage: Option<String>,
    pub metrics: Vec<String>,
    pub lower_is_better: BTreeSet<String>,
    /// Metrics whose best is not marked (an interval's bounds, a tie rate).
    pub unranked: BTreeSet<String>,
    pub digits: usize,
    /// `plot = ["x", "y"]`: the report draws each row at (x, y), mean ± std on both axes.
    pub plot: Option<(String, String)>,
}

/// A validated pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// Where it was read from (for messages).
    pub file: String,
    pub name: String,
    /// The seed axis of seeded stage kinds.
    pub seeds: Vec<u64>,
    /// What `run` does without targets.
    pub default_targets: Vec<String>,
    /// In file order.
    pub stages: Vec<StageDef>,
    pub sweeps: Vec<SweepDef>,
    /// `[target.NAME]` groups: name → what they include.
    pub targets: Vec<(String, Vec<String>)>,
    pub tables: Vec<TableDef>,
    /// `[cache] remote`: the remote cache `run` consults before computing a cell, and that
    /// `push` and `pull` use (`s3://bucket/prefix` or `file:///dir`).
    pub remote: Option<String>,
    /// `[executor]`: where cells run and what Slurm jobs ask for.
    pub executor: crate::executor::ExecutorDef,
}

type Table<'i> = DeTable<'i>;
type Val<'i> = Spanned<DeValue<'i>>;

impl Pipeline {
    /// Parses and validates `text` (read from `file`) against the kinds in `registry`.
    pub fn parse(file: &str, text: &str, registry: &Registry) -> Result<Pipeline, ConfigError> {
        let src = Source { name: file, text };
        let doc = DeTable::parse(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            src.error(span, format!("invalid TOML: {}", e.message().trim()))
                .hint("see https://toml.io for the syntax")
        })?;
        let root = doc.get_ref();
        let p = Parser { src, registry };
        p.known_keys(
            root,
            &[
                "pipeline", "stage", "sweep", "target", "table", "cache", "executor",
            ],
            "top-level section",
        )?;

        let mut pipe = Pipeline {
            file: file.to_owned(),
            name: "pipeline".into(),
            seeds: vec![0],
            default_targets: vec![],
            stages: vec![],
            sweeps: vec![],
            targets: vec![],
            tables: vec![],
            remote: None,
            executor: Default::default(),
        };
        if let Some(sec) = root.get("executor") {
            let t = p.table(sec, "[executor]")?;
            // The defaults of every cell's resources, and the executor's own settings.
            let keys: Vec<&str> = ["kind"]
                .into_iter()
                .chain(crate::executor::RESOURCE_KEYS)
                .chain(["stage", "kind_defaults", "cell", "retries", "arrays"])
                .collect();
            p.known_keys(t, &keys, "key of [executor]")?;
            if let Some(v) = t.get("kind") {
                let k = p.string(v, "executor.kind")?;
                if k != "local" && k != "slurm" {
                    return Err(src
                        .error(v.span(), format!("`executor.kind` is `{k}`"))
                        .hint("use \"local\" (this machine) or \"slurm\""));
                }
                pipe.executor.kind = Some(k);
            }
            pipe.executor.resources = p.resources(t, "executor")?;
            if let Some(v) = t.get("arrays") {
                match v.get_ref() {
                    DeValue::Boolean(b) => pipe.executor.arrays = Some(*b),
                    _ => return Err(src.error(v.span(), "`executor.arrays` must be true or false")),
                }
            }
            if let Some(v) = t.get("retries") {
                match p.value(v)? {
                    Value::Int(i) if (0..=10).contains(&i) => {
                        pipe.executor.retries = Some(i as u64)
                    }
                    _ => {
                        return Err(src.error(
                            v.span(),
                            "`executor.retries` must be an integer from 0 to 10",
                        ));
                    }
                }
            }
            if let Some(st) = t.get("stage") {
                for (name, body) in p.table(st, "[executor.stage]")?.iter() {
                    let n = name.get_ref().to_string();
                    if !pipe_stage_names(root).contains(&n) {
                        return Err(src
                            .error(name.span(), format!("[executor.stage.{n}] names no stage"))
                            .hint("per-stage resources go under the name of a [stage.NAME]"));
                    }
                    let bt = p.table(body, "an [executor.stage.NAME] section")?;
                    p.known_keys(
                        bt,
                        &crate::executor::RESOURCE_KEYS,
                        "key of [executor.stage.NAME]",
                    )?;
                    let r = p.resources(bt, &format!("executor.stage.{n}"))?;
                    pipe.executor.stages.insert(n, r);
                }
            }
            if let Some(kt) = t.get("kind_defaults") {
                for (name, body) in p.table(kt, "[executor.kind_defaults]")?.iter() {
                    let n = name.get_ref().to_string();
                    if p.registry.get(&n).is_none() {
                        return Err(src
                            .error(
                                name.span(),
                                format!("[executor.kind_defaults.{n}] names no stage kind"),
                            )
                            .hint(format!("known kinds: {}", p.registry.names().join(", "))));
                    }
                    let bt = p.table(body, "an [executor.kind_defaults.KIND] section")?;
                    p.known_keys(
                        bt,
                        &crate::executor::RESOURCE_KEYS,
                        "key of [executor.kind_defaults.KIND]",
                    )?;
                    let r = p.resources(bt, &format!("executor.kind_defaults.{n}"))?;
                    pipe.executor.kinds.insert(n, r);
                }
            }
        }
        if let Some(sec) = root.get("cache") {
            let t = p.table(sec, "[cache]")?;
            p.known_keys(t, &["remote"], "key of [cache]")?;
            if let Some(v) = t.get("remote") {
                let url = p.string(v, "cache.remote")?;
                // The schemes spo-remote opens (object_store's forms for S3, GCS and Azure);
                // the rest of the URL is checked there, when the remote is opened.
                let ok = [
                    "s3://", "s3a://", "gs://", "az://", "azure://", "adl://", "abfs://",
                    "abfss://", "https://", "file://",
                ]
                .iter()
                .any(|s| url.strip_prefix(s).is_some_and(|rest| !rest.is_empty()));
                if !ok {
                    return Err(src
                        .error(v.span(), format!("`cache.remote` is `{url}`, not a remote cache"))
                        .hint("use \"s3://bucket/prefix\", \"gs://bucket/prefix\", \"az://container/prefix\" (credentials from AWS_*, GOOGLE_* or AZURE_STORAGE_* variables) or \"file:///a/directory\""));
                }
                pipe.remote = Some(url);
            }
        }
        let mut default_span = None;
        if let Some(sec) = root.get("pipeline") {
            let t = p.table(sec, "[pipeline]")?;
            p.known_keys(t, &["name", "seeds", "default"], "key of [pipeline]")?;
            if let Some(v) = t.get("name") {
                pipe.name = p.string(v, "pipeline.name")?;
            }
            if let Some(v) = t.get("seeds") {
                pipe.seeds = p.seeds(v)?;
            }
            if let Some(v) = t.get("default") {
                pipe.default_targets = p.strings_or_string(v, "pipeline.default")?;
                default_span = Some(v.span());
            }
        }

        let mut stage_spans = BTreeMap::new();
        if let Some(sec) = root.get("stage") {
            for (name, body) in p.table(sec, "[stage]")?.iter() {
                let def = p.stage(name, body)?;
                stage_spans.insert(def.name.clone(), name.span());
                pipe.stages.push(def);
            }
        }
        p.check_needs(root, &pipe.stages)?;
        p.check_cycles(&pipe.stages, &stage_spans)?;
        // Per-cell resources name cells by selector, so they are read once the stages are.
        if let Some(DeValue::Table(t)) = root.get("executor").map(|v| v.get_ref())
            && let Some(ct) = t.get("cell")
        {
            pipe.executor.cells = p.cell_resources(ct, &pipe)?;
        }

        if let Some(sec) = root.get("sweep") {
            for (name, body) in p.table(sec, "[sweep]")?.iter() {
                pipe.sweeps.push(p.sweep(name, body, &pipe.stages)?);
            }
        }
        let mut table_spans = Vec::new();
        if let Some(sec) = root.get("table") {
            for (name, body) in p.table(sec, "[table]")?.iter() {
                pipe.tables.push(p.table_def(name, body, &pipe)?);
                table_spans.push(name.span());
            }
        }
        // Names share one namespace: a target may be any of them.
        let mut seen: BTreeMap<String, &str> = BTreeMap::new();
        for s in &pipe.stages {
            seen.insert(s.name.clone(), "stage");
        }
        for (section, names) in [
            (
                "sweep",
                pipe.sweeps
                    .iter()
                    .map(|s| s.name.clone())
                    .collect::<Vec<_>>(),
            ),
            (
                "table",
                pipe.tables.iter().map(|t| t.name.clone()).collect(),
            ),
        ] {
            for n in names {
                if let Some(other) = seen.insert(n.clone(), section) {
                    let span = p.find_key(root, section, &n).unwrap_or(0..0);
                    return Err(src
                        .error(span, format!("`{n}` names both a {other} and a {section}"))
                        .hint("targets share one namespace: rename one of them"));
                }
            }
        }
        if let Some(sec) = root.get("target") {
            let t = p.table(sec, "[target]")?;
            for (name, _) in t.iter() {
                if let Some(other) = seen.insert(name.get_ref().to_string(), "target") {
                    return Err(src
                        .error(
                            name.span(),
                            format!("`{}` names both a {other} and a target", name.get_ref()),
                        )
                        .hint("targets share one namespace: rename one of them"));
                }
            }
            for (name, body) in t.iter() {
                let bt = p.table(body, "a [target.NAME] section")?;
                p.known_keys(bt, &["includes"], "key of a target")?;
                let inc = bt.get("includes").ok_or_else(|| {
                    src.error(
                        name.span(),
                        format!("target `{}` has no `includes`", name.get_ref()),
                    )
                    .hint("add `includes = [\"stage-or-sweep-or-table\", ...]`")
                })?;
                let list = p.string_list(inc, "includes")?;
                for (item, span) in &list {
                    if !seen.contains_key(item) {
                        let cands: Vec<&str> = seen.keys().map(String::as_str).collect();
                        return Err(src
                            .error(
                                span.clone(),
                                format!(
                                    "target `{}` includes `{item}`, which names nothing",
                                    name.get_ref()
                                ),
                            )
                            .hint(unknown_hint(item, &cands, "target")));
                    }
                }
                pipe.targets.push((
                    name.get_ref().to_string(),
                    list.into_iter().map(|(s, _)| s).collect(),
                ));
            }
            p.check_target_cycles(&pipe.targets, t)?;
        }
        for (i, d) in pipe.default_targets.iter().enumerate() {
            if !seen.contains_key(d) {
                let cands: Vec<&str> = seen.keys().map(String::as_str).collect();
                let _ = i;
                return Err(src.error(default_span.clone().unwrap_or(0..0), format!("pipeline.default names `{d}`, which is not a stage, sweep, table or target")).hint(unknown_hint(d, &cands, "target")));
            }
        }
        let _ = table_spans;
        Ok(pipe)
    }

    /// The stage named `name`.
    pub fn stage(&self, name: &str) -> Option<&StageDef> {
        self.stages.iter().find(|s| s.name == name)
    }
    /// The index of the stage named `name`.
    pub fn stage_index(&self, name: &str) -> Option<usize> {
        self.stages.iter().position(|s| s.name == name)
    }
    pub fn sweep(&self, name: &str) -> Option<&SweepDef> {
        self.sweeps.iter().find(|s| s.name == name)
    }
    pub fn table(&self, name: &str) -> Option<&TableDef> {
        self.tables.iter().find(|t| t.name == name)
    }
    pub fn target(&self, name: &str) -> Option<&[String]> {
        self.targets
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }
    /// Every name `run` accepts as a target, sorted.
    pub fn target_names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .stages
            .iter()
            .map(|s| s.name.as_str())
            .chain(self.sweeps.iter().map(|s| s.name.as_str()))
            .chain(self.tables.iter().map(|t| t.name.as_str()))
            .chain(self.targets.iter().map(|(n, _)| n.as_str()))
            .collect();
        v.sort_unstable();
        v
    }

    /// Applies `--set stage.param=value` (or `pipeline.seeds=[..]`), validated like the file.
    /// Every error points at its column in `arg`.
    pub fn apply_set(&mut self, arg: &str, registry: &Registry) -> Result<(), ConfigError> {
        let src = Source {
            name: "--set",
            text: arg,
        };
        let Some((path, value)) = arg.split_once('=') else {
            return Err(src
                .error(0..arg.len(), "expected `stage.param=value`")
                .hint("for example `--set spo.k=4` or `--set pipeline.seeds=[0,1,2]`"));
        };
        let value_base = path.len() + 1;
        let (path_at, path) = trimmed(path, 0);
        let Some((stage, param)) = path.split_once('.') else {
            return Err(src
                .error(
                    path_at..path_at + path.len(),
                    format!("`{path}` is not `stage.param`"),
                )
                .hint("for example `--set spo.k=4`"));
        };
        let (value_at, value) = trimmed(value, value_base);
        let vspan = value_at..value_at + value.len();
        let parsed = DeValue::parse(value).map_err(|e| {
            let span = e
                .span()
                .map_or(vspan.clone(), |s| s.start + value_at..s.end + value_at);
            src.error(
                span,
                format!("`{value}` is not a TOML value: {}", e.message().trim()),
            )
            .hint("strings need quotes: --set 'stage.p=\"text\"'")
        })?;
        let p = Parser { src, registry };
        let shifted = shift(parsed, value_at);
        let stage_span = path_at..path_at + stage.len();
        if stage == "pipeline" && param == "seeds" {
            self.seeds = p.seeds(&shifted)?;
            return Ok(());
        }
        let Some(def) = self.stages.iter_mut().find(|s| s.name == stage) else {
            let names: Vec<&str> = self.stages.iter().map(|s| s.name.as_str()).collect();
            return Err(src
                .error(stage_span, format!("no stage named `{stage}`"))
                .hint(unknown_hint(stage, &names, "pipeline")));
        };
        let specs = registry.params(&def.kind);
        let pspan = path_at + stage.len() + 1..path_at + path.len();
        let spec = p.spec(specs, param, pspan, &def.kind)?;
        let v = p.value(&shifted)?;
        let v = spec
            .check(&v)
            .map_err(|m| src.error(vspan, format!("param `{param}` of stage `{stage}`: {m}")))?;
        def.params.0.insert(param.to_owned(), v);
        Ok(())
    }
}

struct Parser<'a> {
    src: Source<'a>,
    registry: &'a Registry,
}

impl Parser<'_> {
    fn table<'t, 'i>(&self, v: &'t Val<'i>, what: &str) -> Result<&'t Table<'i>, ConfigError> {
        match v.get_ref() {
            DeValue::Table(t) => Ok(t),
            other => Err(self.src.error(
                v.span(),
                format!("{what} must be a table, found {}", other.type_str()),
            )),
        }
    }

    /// `[executor.cell."stage@param=value,…"]`: each key a selector naming cells (as `run`
    /// takes them), each body resources.
    fn cell_resources(
        &self,
        v: &Val<'_>,
        pipe: &Pipeline,
    ) -> Result<Vec<crate::executor::CellResources>, ConfigError> {
        let mut out = Vec::new();
        for (name, body) in self.table(v, "[executor.cell]")?.iter() {
            let sel = name.get_ref().to_string();
            let what = format!("[executor.cell.\"{sel}\"]");
            if !sel.contains('@') {
                return Err(self
                    .src
                    .error(name.span(), format!("{what} names no param value"))
                    .hint(format!(
                        "name cells as `stage@param=value` (e.g. \"{sel}@k=8\"); resources for every cell of a stage go under [executor.stage.{sel}]"
                    )));
            }
            let (stage, variant) = crate::plan::parse_selector(pipe, self.registry, &sel)
                .map_err(|e| self.src.error(name.span(), format!("{what}: {e}")))?;
            if variant.is_empty() {
                return Err(self
                    .src
                    .error(name.span(), format!("{what} names no param value"))
                    .hint("add `param=value` after the `@`"));
            }
            let bt = self.table(body, &format!("{what} section"))?;
            self.known_keys(
                bt,
                &crate::executor::RESOURCE_KEYS,
                &format!("key of {what}"),
            )?;
            let resources = self.resources(bt, &format!("executor.cell.\"{sel}\""))?;
            out.push(crate::executor::CellResources {
                selector: sel,
                stage,
                variant,
                resources,
            });
        }
        Ok(out)
    }

    /// Slurm resources in a table (`[executor]` or `[executor.stage.NAME]`), each checked.
    fn resources(
        &self,
        t: &Table<'_>,
        what: &str,
    ) -> Result<crate::executor::Resources, ConfigError> {
        use crate::executor::{check_device, check_mem, check_name, check_time};
        let mut r = crate::executor::Resources::default();
        let checked = |key: &str,
                       check: fn(&str) -> Result<(), String>|
         -> Result<Option<String>, ConfigError> {
            let Some(v) = t.get(key) else { return Ok(None) };
            let s = self.string(v, &format!("{what}.{key}"))?;
            check(&s).map_err(|m| self.src.error(v.span(), format!("`{what}.{key}`: {m}")))?;
            Ok(Some(s))
        };
        r.partition = checked("partition", check_name)?;
        r.account = checked("account", check_name)?;
        r.mem = checked("mem", check_mem)?;
        r.time = checked("time", check_time)?;
        r.device = checked("device", check_device)?;
        let count = |key: &str, min: i64| -> Result<Option<u64>, ConfigError> {
            let Some(v) = t.get(key) else { return Ok(None) };
            match self.value(v)? {
                Value::Int(i) if i >= min && i <= 4096 => Ok(Some(i as u64)),
                _ => Err(self.src.error(
                    v.span(),
                    format!("`{what}.{key}` must be an integer from {min} to 4096"),
                )),
            }
        };
        r.cpus = count("cpus", 1)?;
        r.gpus = count("gpus", 0)?;
        Ok(r)
    }

    fn known_keys(&self, t: &Table<'_>, allowed: &[&str], what: &str) -> Result<(), ConfigError> {
        for (k, _) in t.iter() {
            if !allowed.contains(&k.get_ref().as_ref()) {
                return Err(self
                    .src
                    .error(k.span(), format!("unknown {what} `{}`", k.get_ref()))
                    .hint(unknown_hint(k.get_ref(), allowed, what)));
            }
        }
        Ok(())
    }

    fn find_key(&self, root: &Table<'_>, section: &str, name: &str) -> Option<Range<usize>> {
        let DeValue::Table(t) = root.get(section)?.get_ref() else {
            return None;
        };
        t.iter()
            .find(|(k, _)| k.get_ref() == name)
            .map(|(k, _)| k.span())
    }

    fn string(&self, v: &Val<'_>, what: &str) -> Result<String, ConfigError> {
        match v.get_ref() {
            DeValue::String(s) => Ok(s.to_string()),
            other => Err(self.src.error(
                v.span(),
                format!("`{what}` must be a string, found {}", other.type_str()),
            )),
        }
    }

    fn string_list(
        &self,
        v: &Val<'_>,
        what: &str,
    ) -> Result<Vec<(String, Range<usize>)>, ConfigError> {
        match v.get_ref() {
            DeValue::Array(items) => items
                .iter()
                .map(|i| self.string(i, what).map(|s| (s, i.span())))
                .collect(),
            other => Err(self.src.error(
                v.span(),
                format!(
                    "`{what}` must be an array of strings, found {}",
                    other.type_str()
                ),
            )),
        }
    }

    fn strings_or_string(&self, v: &Val<'_>, what: &str) -> Result<Vec<String>, ConfigError> {
        match v.get_ref() {
            DeValue::String(s) => Ok(vec![s.to_string()]),
            _ => Ok(self
                .string_list(v, what)?
                .into_iter()
                .map(|(s, _)| s)
                .collect()),
        }
    }

    fn seeds(&self, v: &Val<'_>) -> Result<Vec<u64>, ConfigError> {
        let bad = || {
            self.src
                .error(
                    v.span(),
                    "`seeds` must be a non-empty array of distinct non-negative integers",
                )
                .hint("for example `seeds = [0, 1, 2]`")
        };
        let DeValue::Array(items) = v.get_ref() else {
            return Err(bad());
        };
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for it in items.iter() {
            match self.value(it)? {
                Value::Int(i) if i >= 0 && seen.insert(i) => out.push(i as u64),
                _ => {
                    return Err(self.src.error(
                        it.span(),
                        "each seed must be a distinct non-negative integer",
                    ));
                }
            }
        }
        if out.is_empty() {
            return Err(bad());
        }
        Ok(out)
    }

    /// Converts a TOML value into a param value.
    fn value(&self, v: &Val<'_>) -> Result<Value, ConfigError> {
        Ok(match v.get_ref() {
            DeValue::String(s) => Value::Str(s.to_string()),
            DeValue::Integer(i) => {
                let digits = i.as_str().replace('_', "");
                let parsed = i64::from_str_radix(digits.trim_start_matches('+'), i.radix());
                Value::Int(parsed.map_err(|_| {
                    self.src
                        .error(v.span(), format!("integer `{i}` does not fit in 64 bits"))
                })?)
            }
            DeValue::Float(f) => {
                let s = f.as_str().replace('_', "");
                Value::Float(
                    s.parse::<f64>()
                        .map_err(|_| self.src.error(v.span(), format!("`{s}` is not a number")))?,
                )
            }
            DeValue::Boolean(b) => Value::Bool(*b),
            DeValue::Array(items) => Value::List(
                items
                    .iter()
                    .map(|i| self.value(i))
                    .collect::<Result<_, _>>()?,
            ),
            DeValue::Datetime(_) | DeValue::Table(_) => {
                return Err(self.src.error(
                    v.span(),
                    format!("a {} is not a valid param value", v.get_ref().type_str()),
                ));
            }
        })
    }

    fn spec<'s>(
        &self,
        specs: &'s [ParamSpec],
        name: &str,
        span: Range<usize>,
        kind: &str,
    ) -> Result<&'s ParamSpec, ConfigError> {
        specs.iter().find(|s| s.name == name).ok_or_else(|| {
            let names: Vec<&str> = specs.iter().map(|s| s.name).collect();
            self.src
                .error(span, format!("unknown param `{name}` for kind `{kind}`"))
                .hint(unknown_hint(name, &names, "kind"))
        })
    }

    fn stage(
        &self,
        name: &Spanned<std::borrow::Cow<'_, str>>,
        body: &Val<'_>,
    ) -> Result<StageDef, ConfigError> {
        let sname = name.get_ref().to_string();
        valid_name(&self.src, &sname, name.span())?;
        let t = self.table(body, &format!("[stage.{sname}]"))?;
        self.known_keys(t, &["kind", "needs", "params"], "key of a stage")?;
        let kind_v = t.get("kind").ok_or_else(|| {
            self.src
                .error(name.span(), format!("stage `{sname}` has no `kind`"))
                .hint(format!(
                    "add `kind = \"...\"`; known kinds: {}",
                    self.registry.names().join(", ")
                ))
        })?;
        let kind = self.string(kind_v, "kind")?;
        if self.registry.get(&kind).is_none() {
            let names = self.registry.names();
            return Err(self
                .src
                .error(kind_v.span(), format!("unknown stage kind `{kind}`"))
                .hint(unknown_hint(&kind, &names, "registry")));
        }
        let needs = match t.get("needs") {
            Some(v) => self
                .string_list(v, "needs")?
                .into_iter()
                .map(|(s, _)| s)
                .collect(),
            None => vec![],
        };
        let specs = self.registry.params(&kind);
        let mut params = NameMap::new();
        if let Some(pv) = t.get("params") {
            let pt = self.table(pv, &format!("[stage.{sname}.params]"))?;
            for (k, v) in pt.iter() {
                let spec = self.spec(specs, k.get_ref(), k.span(), &kind)?;
                let value = self.value(v)?;
                let value = spec.check(&value).map_err(|m| {
                    self.src.error(
                        v.span(),
                        format!("param `{}` of stage `{sname}`: {m}", k.get_ref()),
                    )
                })?;
                params.insert(k.get_ref().to_string(), value);
            }
        }
        for spec in specs {
            if !params.contains_key(spec.name) {
                match &spec.default {
                    Some(d) => {
                        params.insert(spec.name.to_owned(), d.clone());
                    }
                    None => {
                        return Err(self
                            .src
                            .error(
                                name.span(),
                                format!(
                                    "stage `{sname}` is missing the required param `{}` ({})",
                                    spec.name, spec.ty
                                ),
                            )
                            .hint(format!(
                                "add `{} = ...` under [stage.{sname}.params]{}",
                                spec.name,
                                if spec.doc.is_empty() {
                                    String::new()
                                } else {
                                    format!(": {}", spec.doc)
                                }
                            )));
                    }
                }
            }
        }
        Ok(StageDef {
            name: sname,
            kind,
            needs,
            params: Params(params),
        })
    }

    fn check_needs(&self, root: &Table<'_>, stages: &[StageDef]) -> Result<(), ConfigError> {
        let names: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
        let Some(DeValue::Table(st)) = root.get("stage").map(|v| v.get_ref()) else {
            return Ok(());
        };
        for (name, body) in st.iter() {
            let DeValue::Table(t) = body.get_ref() else {
                continue;
            };
            let Some(nv) = t.get("needs") else { continue };
            for (need, span) in self.string_list(nv, "needs")? {
                if !names.contains(&need.as_str()) {
                    return Err(self
                        .src
                        .error(
                            span,
                            format!(
                                "stage `{}` needs `{need}`, which is not a stage",
                                name.get_ref()
                            ),
                        )
                        .hint(unknown_hint(&need, &names, "pipeline")));
                }
                if need == name.get_ref().as_ref() {
                    return Err(self
                        .src
                        .error(span, format!("stage `{need}` needs itself"))
                        .hint("remove it from its own `needs`"));
                }
            }
        }
        Ok(())
    }

    fn check_cycles(
        &self,
        stages: &[StageDef],
        spans: &BTreeMap<String, Range<usize>>,
    ) -> Result<(), ConfigError> {
        let index: BTreeMap<&str, usize> = stages
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect();
        // 0 = unvisited, 1 = on the stack, 2 = done.
        let mut state = vec![0u8; stages.len()];
        let mut stack = Vec::new();
        fn visit(
            i: usize,
            stages: &[StageDef],
            index: &BTreeMap<&str, usize>,
            state: &mut [u8],
            stack: &mut Vec<usize>,
        ) -> Option<Vec<usize>> {
            state[i] = 1;
            stack.push(i);
            for n in &stages[i].needs {
                let j = index[n.as_str()];
                if state[j] == 1 {
                    let from = stack.iter().position(|&s| s == j).unwrap_or(0);
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(j);
                    return Some(cycle);
                }
                if state[j] == 0
                    && let Some(c) = visit(j, stages, index, state, stack)
                {
                    return Some(c);
                }
            }
            stack.pop();
            state[i] = 2;
            None
        }
        for i in 0..stages.len() {
            if state[i] == 0
                && let Some(cycle) = visit(i, stages, &index, &mut state, &mut stack)
            {
                let path = cycle
                    .iter()
                    .map(|&c| stages[c].name.as_str())
                    .collect::<Vec<_>>()
                    .join(" -> ");
                let first = &stages[cycle[0]].name;
                return Err(self.src.error(spans.get(first).cloned().unwrap_or(0..0), format!("stage `{first}` has a circular dependency `{path}`")).hint("a stage cannot need, directly or through others, a stage that needs it: remove one of these `needs`"));
            }
        }
        Ok(())
    }

    fn check_target_cycles(
        &self,
        targets: &[(String, Vec<String>)],
        t: &Table<'_>,
    ) -> Result<(), ConfigError> {
        fn reaches(from: &str, to: &str, targets: &[(String, Vec<String>)], depth: usize) -> bool {
            depth < 64
                && targets
                    .iter()
                    .find(|(n, _)| n == from)
                    .is_some_and(|(_, inc)| {
                        inc.iter()
                            .any(|i| i == to || reaches(i, to, targets, depth + 1))
                    })
        }
        for (name, _) in targets {
            if reaches(name, name, targets, 0) {
                let span = t
                    .iter()
                    .find(|(k, _)| k.get_ref() == name.as_str())
                    .map_or(0..0, |(k, _)| k.span());
                return Err(self
                    .src
                    .error(
                        span,
                        format!("target `{name}` includes itself (through its `includes`)"),
                    )
                    .hint("remove the circular include"));
            }
        }
        Ok(())
    }

    fn sweep(
        &self,
        name: &Spanned<std::borrow::Cow<'_, str>>,
        body: &Val<'_>,
        stages: &[StageDef],
    ) -> Result<SweepDef, ConfigError> {
        let sname = name.get_ref().to_string();
        valid_name(&self.src, &sname, name.span())?;
        let t = self.table(body, &format!("[sweep.{sname}]"))?;
        self.known_keys(t, &["stage", "grid", "zip"], "key of a sweep")?;
        let sv = t.get("stage").ok_or_else(|| {
            self.src
                .error(name.span(), format!("sweep `{sname}` has no `stage`"))
                .hint("add `stage = \"<the stage whose params it sweeps>\"`")
        })?;
        let stage = self.string(sv, "stage")?;
        let Some(def) = stages.iter().find(|s| s.name == stage) else {
            let names: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
            return Err(self
                .src
                .error(
                    sv.span(),
                    format!("sweep `{sname}` is over `{stage}`, which is not a stage"),
                )
                .hint(unknown_hint(&stage, &names, "pipeline")));
        };
        let specs = self.registry.params(&def.kind);
        let (axes_v, zip) = match (t.get("grid"), t.get("zip")) {
            (Some(g), None) => (g, false),
            (None, Some(z)) => (z, true),
            (Some(_), Some(z)) => return Err(self.src.error(z.span(), format!("sweep `{sname}` has both `grid` and `zip`")).hint("use one: `grid` takes every combination, `zip` pairs values position by position")),
            (None, None) => return Err(self.src.error(name.span(), format!("sweep `{sname}` has neither `grid` nor `zip`")).hint("add `grid = { param = [v1, v2] }`")),
        };
        let axes_t = self.table(axes_v, if zip { "`zip`" } else { "`grid`" })?;
        let mut axes: Vec<(String, Vec<Value>, Range<usize>)> = Vec::new();
        for (k, v) in axes_t.iter() {
            let spec = self.spec(specs, k.get_ref(), k.span(), &def.kind)?;
            let DeValue::Array(items) = v.get_ref() else {
                return Err(self
                    .src
                    .error(
                        v.span(),
                        format!("sweep values of `{}` must be an array", k.get_ref()),
                    )
                    .hint(format!("for example `{} = [1, 2, 3]`", k.get_ref())));
            };
            if items.is_empty() {
                return Err(self.src.error(
                    v.span(),
                    format!("sweep `{sname}` gives `{}` no values", k.get_ref()),
                ));
            }
            let mut vals = Vec::new();
            for it in items.iter() {
                let val = self.value(it)?;
                vals.push(spec.check(&val).map_err(|m| {
                    self.src.error(
                        it.span(),
                        format!("sweep `{sname}`, param `{}`: {m}", k.get_ref()),
                    )
                })?);
            }
            axes.push((k.get_ref().to_string(), vals, v.span()));
        }
        if axes.is_empty() {
            return Err(self
                .src
                .error(axes_v.span(), format!("sweep `{sname}` sweeps no param")));
        }
        let mut cells: Vec<NameMap<Value>> = vec![NameMap::new()];
        if zip {
            let n = axes[0].1.len();
            if let Some((k, v, span)) = axes.iter().find(|(_, v, _)| v.len() != n) {
                return Err(self
                    .src
                    .error(
                        span.clone(),
                        format!(
                            "`zip` needs equal lengths: `{}` has {n} values, `{k}` has {}",
                            axes[0].0,
                            v.len()
                        ),
                    )
                    .hint("use `grid` for every combination"));
            }
            cells = (0..n)
                .map(|i| {
                    axes.iter()
                        .map(|(k, v, _)| (k.clone(), v[i].clone()))
                        .collect()
                })
                .collect();
        } else {
            for (k, vals, _) in &axes {
                cells = cells
                    .iter()
                    .flat_map(|c| {
                        vals.iter().map(move |v| {
                            let mut c = c.clone();
                            c.insert(k.clone(), v.clone());
                            c
                        })
                    })
                    .collect();
            }
        }
        // First occurrence kept, by canonical encoding (as cell ids see the values).
        let mut seen = HashSet::new();
        cells.retain(|c| seen.insert(encode_overrides(c)));
        Ok(SweepDef {
            name: sname,
            stage,
            cells: cells
                .into_iter()
                .map(|mut c| {
                    c.shrink_to_fit();
                    Arc::new(c)
                })
                .collect(),
        })
    }

    fn table_def(
        &self,
        name: &Spanned<std::borrow::Cow<'_, str>>,
        body: &Val<'_>,
        pipe: &Pipeline,
    ) -> Result<TableDef, ConfigError> {
        let tname = name.get_ref().to_string();
        valid_name(&self.src, &tname, name.span())?;
        let t = self.table(body, &format!("[table.{tname}]"))?;
        self.known_keys(
            t,
            &[
                "title",
                "sweep",
                "rows",
                "stage",
                "metrics",
                "lower_is_better",
                "unranked",
                "digits",
                "plot",
            ],
            "key of a table",
        )?;
        let stage_names: Vec<&str> = pipe.stages.iter().map(|s| s.name.as_str()).collect();
        let stage = match t.get("stage") {
            Some(sv) => {
                let stage = self.string(sv, "stage")?;
                if !stage_names.contains(&stage.as_str()) {
                    return Err(self
                        .src
                        .error(
                            sv.span(),
                            format!("table `{tname}` reads stage `{stage}`, which is not a stage"),
                        )
                        .hint(unknown_hint(&stage, &stage_names, "pipeline")));
                }
                Some((stage, sv.span()))
            }
            None => None,
        };
        let rows = match (t.get("sweep"), t.get("rows")) {
            (Some(sw), None) => {
                let Some((stage, sspan)) = &stage else {
                    return Err(self
                        .src
                        .error(
                            name.span(),
                            format!("table `{tname}` has a sweep but no `stage`"),
                        )
                        .hint("add `stage = \"<the stage whose metrics fill the columns>\"`"));
                };
                let sweep = self.string(sw, "sweep")?;
                let Some(def) = pipe.sweep(&sweep) else {
                    let names: Vec<&str> = pipe.sweeps.iter().map(|s| s.name.as_str()).collect();
                    return Err(self
                        .src
                        .error(
                            sw.span(),
                            format!(
                                "table `{tname}` is over sweep `{sweep}`, which is not a sweep"
                            ),
                        )
                        .hint(unknown_hint(&sweep, &names, "pipeline")));
                };
                if !depends_on(pipe, stage, &def.stage) {
                    return Err(self.src.error(sspan.clone(), format!("table `{tname}` reads stage `{stage}`, which does not depend on the swept stage `{}`", def.stage)).hint(format!("use `{}` or a stage downstream of it", def.stage)));
                }
                Rows::Sweep(sweep)
            }
            (None, Some(rv)) => {
                let rt = self.table(rv, "`rows`")?;
                let mut rows = Vec::new();
                for (label, sel) in rt.iter() {
                    let s = self.string(sel, "a row")?;
                    let base = s.split('@').next().unwrap_or(&s);
                    if !stage_names.contains(&base) {
                        return Err(self
                            .src
                            .error(
                                sel.span(),
                                format!(
                                    "row `{}` names `{base}`, which is not a stage",
                                    label.get_ref()
                                ),
                            )
                            .hint(unknown_hint(base, &stage_names, "pipeline")));
                    }
                    if let Err(e) = crate::plan::parse_selector(pipe, self.registry, &s) {
                        return Err(self
                            .src
                            .error(sel.span(), format!("row `{}`: {e}", label.get_ref())));
                    }
                    rows.push((label.get_ref().to_string(), s));
                }
                if rows.is_empty() {
                    return Err(self
                        .src
                        .error(rv.span(), format!("table `{tname}` has no rows")));
                }
                Rows::Named(rows)
            }
            (Some(_), Some(rv)) => {
                return Err(self
                    .src
                    .error(
                        rv.span(),
                        format!("table `{tname}` has both `sweep` and `rows`"),
                    )
                    .hint("rows come from a sweep's cells or from named stages, not both"));
            }
            (None, None) => {
                return Err(self
                    .src
                    .error(
                        name.span(),
                        format!("table `{tname}` has neither `sweep` nor `rows`"),
                    )
                    .hint("add `sweep = \"...\"` or `rows = { \"Label\" = \"stage\" }`"));
            }
        };
        let mv = t.get("metrics").ok_or_else(|| {
            self.src
                .error(name.span(), format!("table `{tname}` has no `metrics`"))
                .hint("add `metrics = [\"name\", ...]`")
        })?;
        let metrics: Vec<String> = self
            .string_list(mv, "metrics")?
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        if metrics.is_empty() {
            return Err(self
                .src
                .error(mv.span(), format!("table `{tname}` has no metrics")));
        }
        let subset = |key: &str| -> Result<BTreeSet<String>, ConfigError> {
            let mut out = BTreeSet::new();
            if let Some(lv) = t.get(key) {
                for (m, span) in self.string_list(lv, key)? {
                    if !metrics.contains(&m) {
                        return Err(self
                            .src
                            .error(span, format!("`{m}` is not among the table's metrics")));
                    }
                    out.insert(m);
                }
            }
            Ok(out)
        };
        let lower = subset("lower_is_better")?;
        let unranked = subset("unranked")?;
        let title = match t.get("title") {
            Some(v) => self.string(v, "title")?,
            None => tname.clone(),
        };
        let digits = match t.get("digits") {
            Some(v) => match self.value(v)? {
                Value::Int(d) if (0..=8).contains(&d) => d as usize,
                _ => {
                    return Err(self
                        .src
                        .error(v.span(), "`digits` must be an integer in [0, 8]"));
                }
            },
            None => 3,
        };
        let plot = match t.get("plot") {
            Some(pv) => {
                let axes = self.string_list(pv, "plot")?;
                if let Some((m, span)) = axes.iter().find(|(m, _)| !metrics.contains(m)) {
                    return Err(self
                        .src
                        .error(
                            span.clone(),
                            format!("`{m}` is not among the table's metrics"),
                        )
                        .hint("plot two of the table's `metrics`"));
                }
                match <[(String, _); 2]>::try_from(axes) {
                    Ok([(x, _), (y, _)]) => Some((x, y)),
                    Err(_) => {
                        return Err(self
                            .src
                            .error(pv.span(), "`plot` names two metrics: [x, y]")
                            .hint("e.g. `plot = [\"total_cpu_seconds\", \"score_final\"]`"));
                    }
                }
            }
            None => None,
        };
        Ok(TableDef {
            name: tname,
            title,
            rows,
            stage: stage.map(|(s, _)| s),
            metrics,
            lower_is_better: lower,
            unranked,
            digits,
            plot,
        })
    }
}

/// `v` with its span, and its items' spans, moved `by` bytes on: a value parsed from a slice of
/// a longer text, positioned in that text.
fn shift(v: Val<'_>, by: usize) -> Val<'_> {
    let span = v.span();
    let inner = match v.into_inner() {
        DeValue::Array(items) => DeValue::Array(items.into_iter().map(|i| shift(i, by)).collect()),
        other => other,
    };
    Spanned::new(span.start + by..span.end + by, inner)
}

/// `text` without surrounding whitespace, and the byte offset where that starts, given that
/// `text` starts at byte `at`.
fn trimmed(text: &str, at: usize) -> (usize, &str) {
    let start = text.len() - text.trim_start().len();
    (at + start, text.trim())
}

/// The canonical bytes of a set of param overrides (a sweep cell).
pub(crate) fn encode_overrides(ov: &NameMap<Value>) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in ov {
        out.extend_from_slice(&(k.len() as u64).to_le_bytes());
        out.extend_from_slice(k.as_bytes());
        v.encode(&mut out);
    }
    out
}

/// Whether stage `a` is `b` or (transitively) needs it.
pub fn depends_on(pipe: &Pipeline, a: &str, b: &str) -> bool {
    fn go(pipe: &Pipeline, a: &str, b: &str, depth: usize) -> bool {
        a == b
            || (depth < 256
                && pipe
                    .stage(a)
                    .is_some_and(|s| s.needs.iter().any(|n| go(pipe, n, b, depth + 1))))
    }
    go(pipe, a, b, 0)
}

fn valid_name(src: &Source<'_>, name: &str, span: Range<usize>) -> Result<(), ConfigError> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(src
            .error(span, format!("`{name}` is not a valid name"))
            .hint("use letters, digits, `-` and `_`"));
    }
    Ok(())
}

/// The names of the `[stage.NAME]` sections of a parsed file.
fn pipe_stage_names(root: &Table<'_>) -> Vec<String> {
    match root.get("stage").map(|v| v.get_ref()) {
        Some(DeValue::Table(t)) => t.iter().map(|(k, _)| k.get_ref().to_string()).collect(),
        _ => Vec::new(),
    }
}
