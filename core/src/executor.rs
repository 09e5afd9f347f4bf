//! `[executor]` in pipeline.toml: where cells run (this machine, or Slurm jobs) and the
//! resources each job asks for, validated when the file is read (docs/slurm.md).

use std::collections::BTreeMap;

use crate::plan::{Plan, Variant};

/// What a cell's job asks for. Unset fields fall back to the `[executor]` defaults, then to
/// Slurm's own (or, for `device`, to the run's `--device`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub partition: Option<String>,
    pub account: Option<String>,
    /// CPUs per job (`--cpus-per-task`); also the job's `--jobs` for the cell.
    pub cpus: Option<u64>,
    /// `--mem`, e.g. `4G` or `4096` (MiB).
    pub mem: Option<String>,
    /// `--time`, in one of Slurm's forms (`30`, `30:00`, `1:00:00`, `2-00:00:00`, …).
    pub time: Option<String>,
    /// `--gpus`.
    pub gpus: Option<u64>,
    /// The compute device of the cell's model stages (`cpu`, `cuda`, `cuda:N`), for the
    /// executor to honour: a Slurm job runs with it as `--device`; a local run gives a cell
    /// whose device is not its own to a child `spo-pipe` on that device. Like `--device`, not
    /// part of any key.
    pub device: Option<String>,
}

/// The keys of a resources table (`[executor]`, `[executor.stage.NAME]`, …).
pub const RESOURCE_KEYS: [&str; 7] = [
    "partition",
    "account",
    "cpus",
    "mem",
    "time",
    "gpus",
    "device",
];

impl Resources {
    /// `self`, with `other`'s fields where `self` has none.
    pub fn or(&self, other: &Resources) -> Resources {
        Resources {
            partition: self.partition.clone().or_else(|| other.partition.clone()),
            account: self.account.clone().or_else(|| other.account.clone()),
            cpus: self.cpus.or(other.cpus),
            mem: self.mem.clone().or_else(|| other.mem.clone()),
            time: self.time.clone().or_else(|| other.time.clone()),
            gpus: self.gpus.or(other.gpus),
            device: self.device.clone().or_else(|| other.device.clone()),
        }
    }
}

/// The `[executor]` table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecutorDef {
    /// `local` (the default) or `slurm`.
    pub kind: Option<String>,
    /// Defaults for every job.
    pub resources: Resources,
    /// `[executor.stage.NAME]`: per-stage overrides.
    pub stages: BTreeMap<String, Resources>,
    /// `[executor.kind_defaults.KIND]`: defaults per stage kind (a training kind wants a GPU
    /// and hours, a scorer minutes), under the per-stage overrides.
    pub kinds: BTreeMap<String, Resources>,
    /// Jobs to try again after one ends without committing its cell (default 0): a retry
    /// after OUT_OF_MEMORY asks for twice the memory, after TIMEOUT twice the time.
    pub retries: Option<u64>,
    /// Submit cells that are ready together with the same resources as one job array
    /// (default true).
    pub arrays: Option<bool>,
    /// `[executor.cell."SELECTOR"]`: per-cell overrides, over the stage's, in file order.
    pub cells: Vec<CellResources>,
}

/// One `[executor.cell."stage@param=value,…"]`: the resources of the cells a selector names.
#[derive(Debug, Clone, PartialEq)]
pub struct CellResources {
    /// As written, for messages.
    pub selector: String,
    pub stage: String,
    /// The param values a cell (or its upstream cells: `score@spo.k=8`) must have.
    pub variant: Variant,
    pub resources: Resources,
}

impl CellResources {
    /// Conditions in the selector: the more, the more specific.
    fn conditions(&self) -> usize {
        self.variant.iter().map(|(_, ov)| ov.len()).sum()
    }

    /// Whether node `i` of `plan` is a cell this selector names: its stage, and every param
    /// the selector gives equal in the node's resolved params (or in those of its upstream
    /// node of the stage the param is on).
    pub fn matches(&self, plan: &Plan, i: usize) -> bool {
        let node = &plan.nodes[i];
        if *node.stage_name != *self.stage {
            return false;
        }
        self.variant.iter().all(|(stage, ov)| {
            let Some(n) = plan
                .lineage(i)
                .into_iter()
                .find(|&n| *plan.nodes[n].stage_name == **stage)
            else {
                return false;
            };
            let params = &plan.nodes[n].params.0;
            ov.iter().all(|(k, v)| params.get(k) == Some(v))
        })
    }
}

impl ExecutorDef {
    /// Whether any table names a device (the local executor then looks at each cell's).
    pub fn names_a_device(&self) -> bool {
        self.resources.device.is_some()
            || self.stages.values().any(|r| r.device.is_some())
            || self.kinds.values().any(|r| r.device.is_some())
            || self.cells.iter().any(|c| c.resources.device.is_some())
    }

    /// The resources of a job computing a cell of `stage`, of kind `kind`: the stage's own,
    /// then its kind's defaults, then the `[executor]` defaults, field by field.
    pub fn resources_for(&self, stage: &str, kind: &str) -> Resources {
        let base = self
            .kinds
            .get(kind)
            .map_or_else(|| self.resources.clone(), |r| r.or(&self.resources));
        self.stages.get(stage).map_or(base.clone(), |r| r.or(&base))
    }

    /// The resources of the job computing node `i` of `plan`: the `[executor.cell]` tables that
    /// name it, the more specific (more conditions) first, over [`ExecutorDef::resources_for`].
    /// Two equally specific tables that both name the cell and give one field different values
    /// are an error naming the cell and both tables.
    pub fn resources_for_cell(&self, plan: &Plan, i: usize) -> Result<Resources, String> {
        let node = &plan.nodes[i];
        let base = self.resources_for(&node.stage_name, &node.kind);
        let mut hits: Vec<&CellResources> =
            self.cells.iter().filter(|c| c.matches(plan, i)).collect();
        if hits.is_empty() {
            return Ok(base);
        }
        hits.sort_by_key(|c| std::cmp::Reverse(c.conditions()));
        // Every pair of equally specific tables, not only neighbours: two may disagree on a
        // field a third between them leaves unset.
        for (n, a) in hits.iter().enumerate() {
            for b in hits[n + 1..]
                .iter()
                .take_while(|b| b.conditions() == a.conditions())
            {
                let Some(field) = a.resources.conflict(&b.resources) else {
                    continue;
                };
                return Err(format!(
                    "cell {} of stage `{}`: [executor.cell.\"{}\"] and [executor.cell.\"{}\"] both name it and give `{field}` different values; make one more specific",
                    node.display(),
                    node.stage_name,
                    a.selector,
                    b.selector
                ));
            }
        }
        Ok(hits
            .iter()
            .fold(Resources::default(), |acc, c| acc.or(&c.resources))
            .or(&base))
    }
}

impl Resources {
    /// The first field both set, to different values.
    fn conflict(&self, other: &Resources) -> Option<&'static str> {
        fn differ<T: PartialEq>(a: &Option<T>, b: &Option<T>) -> bool {
            matches!((a, b), (Some(x), Some(y)) if x != y)
        }
        [
            ("partition", differ(&self.partition, &other.partition)),
            ("account", differ(&self.account, &other.account)),
            ("cpus", differ(&self.cpus, &other.cpus)),
            ("mem", differ(&self.mem, &other.mem)),
            ("time", differ(&self.time, &other.time)),
            ("gpus", differ(&self.gpus, &other.gpus)),
            ("device", differ(&self.device, &other.device)),
        ]
        .into_iter()
        .find_map(|(f, d)| d.then_some(f))
    }
}

/// Checks a `--mem` value: digits with an optional K, M, G or T suffix.
pub fn check_mem(s: &str) -> Result<(), String> {
    let digits = s.trim_end_matches(['K', 'M', 'G', 'T', 'k', 'm', 'g', 't']);
    let suffix = s.len() - digits.len();
    if digits.is_empty() || suffix > 1 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "`{s}` is not a memory size Slurm reads (digits and one of K, M, G, T, e.g. `4G`; plain digits are MiB)"
        ));
    }
    if digits.parse::<u64>().map_or(true, |n| n == 0) {
        return Err(format!("`{s}`: a job needs some memory"));
    }
    Ok(())
}

/// Checks a `--time` value: `M`, `M:S`, `H:M:S`, `D-H`, `D-H:M` or `D-H:M:S`.
pub fn check_time(s: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "`{s}` is not a time limit Slurm reads (minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS)"
        )
    };
    let num = |p: &str| !p.is_empty() && p.len() <= 6 && p.bytes().all(|b| b.is_ascii_digit());
    let (days, rest) = match s.split_once('-') {
        Some((d, r)) => (Some(d), r),
        None => (None, s),
    };
    if days.is_some_and(|d| !num(d)) {
        return Err(bad());
    }
    let parts: Vec<&str> = rest.split(':').collect();
    if parts.is_empty() || parts.len() > 3 || !parts.iter().all(|p| num(p)) {
        return Err(bad());
    }
    // Minutes and seconds below 60 after the first field.
    if parts[1..]
        .iter()
        .any(|p| p.parse::<u32>().map_or(true, |n| n >= 60))
    {
        return Err(bad());
    }
    if s.bytes().all(|b| b == b'0' || b == b':' || b == b'-') {
        return Err(format!("`{s}`: a time limit of zero"));
    }
    Ok(())
}

/// Checks a device name: `cpu`, `cuda` or `cuda:N` (whether this build and machine can open it
/// is the binary's check, before a run starts).
pub fn check_device(s: &str) -> Result<(), String> {
    let index = s.strip_prefix("cuda:");
    if s == "cpu" || s == "cuda" || index.is_some_and(|n| n.parse::<u32>().is_ok()) {
        return Ok(());
    }
    Err(format!(
        "`{s}` is not a device: use cpu, cuda or cuda:N (N the GPU's index)"
    ))
}

/// Checks a partition or account name: what Slurm accepts in one (no spaces, commas or shell
/// metacharacters).
pub fn check_name(s: &str) -> Result<(), String> {
    if s.is_empty()
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
    {
        return Err(format!("`{s}` is not a Slurm partition or account name"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_beats_its_kind_which_beats_the_defaults() {
        let r = |cpus: Option<u64>, mem: Option<&str>, time: Option<&str>| Resources {
            cpus,
            mem: mem.map(str::to_owned),
            time: time.map(str::to_owned),
            ..Resources::default()
        };
        let mut e = ExecutorDef {
            resources: r(Some(1), Some("1G"), Some("10")),
            ..ExecutorDef::default()
        };
        e.kinds
            .insert("train".into(), r(Some(4), Some("16G"), None));
        e.stages.insert("spo".into(), r(None, Some("64G"), None));
        assert_eq!(
            e.resources_for("spo", "train"),
            r(Some(4), Some("64G"), Some("10"))
        );
        assert_eq!(
            e.resources_for("base", "train"),
            r(Some(4), Some("16G"), Some("10"))
        );
        assert_eq!(
            e.resources_for("score", "score"),
            r(Some(1), Some("1G"), Some("10"))
        );
    }

    #[test]
    fn slurm_forms_are_accepted_and_others_refused() {
        for ok in [
            "30",
            "30:00",
            "1:00:00",
            "2-00",
            "2-12:30",
            "2-12:30:15",
            "0:30",
        ] {
            check_time(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["", "1h", "1:99", "1:2:3:4", "-5", "00:00", "a-1", "1:00:60"] {
            assert!(check_time(bad).is_err(), "{bad}");
        }
        for ok in ["4G", "4096", "512M", "1T"] {
            check_mem(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["", "4GB", "G", "0", "-1G", "4.5G", "4 G"] {
            assert!(check_mem(bad).is_err(), "{bad}");
        }
        check_name("gpu-a100").unwrap();
        assert!(check_name("a b").is_err() && check_name("x,y").is_err());
    }
}
