//! `[executor]` in pipeline.toml: where cells run (this machine, or Slurm jobs) and the
//! resources each job asks for, validated when the file is read (docs/slurm.md).

use std::collections::BTreeMap;

/// What a Slurm job asks for. Unset fields fall back to the `[executor]` defaults, then to
/// Slurm's own.
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
}

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
        }
    }
}

/// The `[executor]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
}

impl ExecutorDef {
    /// The resources of a job computing a cell of `stage`, of kind `kind`: the stage's own,
    /// then its kind's defaults, then the `[executor]` defaults, field by field.
    pub fn resources_for(&self, stage: &str, kind: &str) -> Resources {
        let base = self
            .kinds
            .get(kind)
            .map_or_else(|| self.resources.clone(), |r| r.or(&self.resources));
        self.stages.get(stage).map_or(base.clone(), |r| r.or(&base))
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
