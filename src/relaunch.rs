//! Starting this same pipeline in another `spo-pipe` process to compute one key: a Slurm job
//! (`slurm.rs`), or a local child on a cell's own device (`RunOptions::elsewhere`, for
//! `[executor.stage.NAME] device = …`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use anyhow::Context;
use spo_core::plan::Plan;
use spo_core::run::Elsewhere;
use spo_stages::device::DeviceChoice;

use crate::UsageError;
use crate::pipeline::Loaded;

/// What another process needs to run the same cells: this binary, the pipeline file (none: the
/// embedded default), the store, the `--set` overrides, the targets, `--device-memory`.
#[derive(Debug, Clone)]
pub struct Relaunch {
    pub exe: PathBuf,
    pub pipeline: Option<PathBuf>,
    pub store: PathBuf,
    pub sets: Vec<String>,
    pub targets: Vec<String>,
    pub device_memory: Option<String>,
}

impl Relaunch {
    /// For a run of `l`'s pipeline (given as `--pipeline pipeline`, else `./pipeline.toml` if
    /// there is one) on `targets`, with the store at `store` (absolute: a job may start
    /// elsewhere than this directory).
    pub fn new(
        store: PathBuf,
        pipeline: Option<&Path>,
        sets: &[String],
        targets: &[String],
        device_memory: Option<&str>,
    ) -> anyhow::Result<Self> {
        let pipeline = match pipeline {
            Some(p) => Some(std::fs::canonicalize(p).with_context(|| p.display().to_string())?),
            None if Path::new("pipeline.toml").is_file() => {
                Some(std::fs::canonicalize("pipeline.toml").context("pipeline.toml")?)
            }
            None => None,
        };
        Ok(Relaunch {
            exe: std::env::current_exe().context("finding this binary to start it again")?,
            pipeline,
            store,
            sets: sets.to_vec(),
            targets: targets.to_vec(),
            device_memory: device_memory.map(str::to_owned),
        })
    }

    /// The arguments of `spo-pipe` computing `key` alone with `jobs` cores on `device` (none:
    /// the machine's default).
    pub fn args(&self, key: &str, jobs: u64, device: Option<&str>) -> Vec<String> {
        let mut a = Vec::new();
        if let Some(p) = &self.pipeline {
            a.extend(["--pipeline".into(), p.display().to_string()]);
        }
        a.extend(["--store".into(), self.store.display().to_string()]);
        for s in &self.sets {
            a.extend(["--set".into(), s.clone()]);
        }
        for (flag, value) in [
            ("--device", device),
            ("--device-memory", self.device_memory.as_deref()),
        ] {
            if let Some(v) = value {
                a.extend([flag.into(), v.to_owned()]);
            }
        }
        a.push("run".into());
        a.extend(self.targets.iter().cloned());
        a.extend([
            "--only-key".into(),
            key.to_owned(),
            "--jobs".into(),
            jobs.to_string(),
            "--no-report".into(),
        ]);
        a
    }
}

/// The hook that gives each cell whose `[executor]` device differs from this run's own
/// (`own`: the `--device` given, resolved as this process resolved it) to a child `spo-pipe`
/// on that device; `None` when no cell names another device. Each device a cell names is
/// checked first (a CUDA device on a build without CUDA, or a GPU that is not there, is a
/// usage error before anything runs).
pub fn elsewhere(
    l: &Loaded,
    plan: &Plan,
    relaunch: Relaunch,
    own: DeviceChoice,
    jobs: u64,
    quiet: bool,
) -> anyhow::Result<Option<Arc<Elsewhere>>> {
    if !l.pipe.executor.names_a_device() {
        return Ok(None);
    }
    let mut per_node: Vec<Option<DeviceChoice>> = Vec::with_capacity(plan.nodes.len());
    let mut opened: Vec<DeviceChoice> = Vec::new();
    for i in 0..plan.nodes.len() {
        let r = l
            .pipe
            .executor
            .resources_for_cell(plan, i)
            .map_err(|e| UsageError(format!("{}: {e}", l.pipe.file)))?;
        let d = match r.device.as_deref() {
            None => None,
            Some(d) => {
                let choice: DeviceChoice = d
                    .parse()
                    .map_err(|e| UsageError(format!("{}: {e}", l.pipe.file)))?;
                // Opened once per device, not per cell.
                if !opened.contains(&choice) {
                    spo_stages::device::probe(choice).map_err(|e| {
                        UsageError(format!(
                            "{}: {} asks for device {choice}: {e}",
                            l.pipe.file,
                            plan.nodes[i].display()
                        ))
                    })?;
                    opened.push(choice);
                }
                (choice != own).then_some(choice)
            }
        };
        per_node.push(d);
    }
    if per_node.iter().all(Option::is_none) {
        return Ok(None);
    }
    let labels: Vec<String> = plan.nodes.iter().map(|n| n.display()).collect();
    Ok(Some(Arc::new(move |id: usize, key: &str| {
        let device = per_node[id]?.to_string();
        if !quiet {
            eprintln!("▶ running  {}  on {device} (a child spo-pipe)", labels[id]);
        }
        let status = Command::new(&relaunch.exe)
            .args(relaunch.args(key, jobs, Some(&device)))
            .arg("-q")
            .stdin(Stdio::null())
            .status();
        Some(match status {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(format!("the child spo-pipe on {device} ended with {s}")),
            Err(e) => Err(format!("could not start a child spo-pipe on {device}: {e}")),
        })
    })))
}
