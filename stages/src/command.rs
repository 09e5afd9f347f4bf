//! `command`: run a shell command as a stage, for steps written in any language.
//!
//! The command runs under `sh -c` in its own process group, which ends with it and with
//! spo-pipe however spo-pipe ends ([`ProcessGroup`]): no process of a stage outlives it. Its
//! stdin is a handle on the cell's lock (an empty file), so any process it starts that escapes
//! the group still keeps the key ‒ its staging and scratch directories ‒ from every other run
//! until it ends. It sees:
//!
//! | variable | meaning |
//! |---|---|
//! | `SPO_OUT` | directory to write outputs into (committed on exit status 0) |
//! | `SPO_SCRATCH` | checkpoint directory kept across failures and kills, for resuming |
//! | `SPO_STAGE`, `SPO_SEED` | the stage's name, and its seed where it has one |
//! | `SPO_PARAMS` | the resolved params as JSON |
//! | `SPO_INPUT_<NEED>` | the committed directory of each input (name upper-cased, `-` → `_`) |
//!
//! A `metrics.json` object of numbers written to `SPO_OUT` becomes the cell's metrics. Files
//! listed in `deps` (scripts, say) are hashed into the key, so editing them reruns the stage.

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};
use spo_core::{ParamSpec, Params, StageContext, StageError, StageKind};

use crate::error::Result;
use crate::process_group::ProcessGroup;

spo_core::stage_params! {
    /// The params of `command`.
    pub struct CommandParams {
        /// the command, run with `sh -c`
        cmd: String = string("").required(),
        /// files whose content is part of the key
        deps: Vec<String> = str_list(&[]),
    }
}

/// The `command` stage kind.
pub struct Shell;

impl StageKind for Shell {
    fn name(&self) -> &'static str {
        "command"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "run a shell command with SPO_OUT / SPO_SCRATCH / SPO_INPUT_* set"
    }
    fn params(&self) -> Vec<ParamSpec> {
        CommandParams::specs()
    }
    fn external_digest(&self, params: &Params) -> Result<Option<String>, StageError> {
        let deps = CommandParams::from_params(params)?.deps;
        if deps.is_empty() {
            return Ok(None);
        }
        let mut h = Sha256::new();
        for d in &deps {
            let bytes = fs::read(d).map_err(|e| StageError::io(d, e))?;
            h.update((d.len() as u64).to_le_bytes());
            h.update(d.as_bytes());
            h.update(Sha256::digest(&bytes));
        }
        Ok(Some(hex::encode(h.finalize())))
    }
    fn run(&self, cx: &mut StageContext) -> Result<(), StageError> {
        let cmd = CommandParams::from_params(cx.params())?.cmd;
        let log_path = cx.scratch_dir().join("command.log");
        let log = fs::File::create(&log_path).map_err(|e| StageError::io(&log_path, e))?;
        let log2 = log.try_clone().map_err(|e| StageError::io(&log_path, e))?;
        let stdin = match cx.lock_holder()? {
            Some(lock) => Stdio::from(lock),
            None => Stdio::null(),
        };
        let mut c = Command::new("sh");
        c.arg("-c").arg(&cmd).stdin(stdin).stdout(log).stderr(log2);
        c.env("SPO_OUT", cx.out_dir())
            .env("SPO_SCRATCH", cx.scratch_dir())
            .env("SPO_STAGE", cx.stage());
        c.env(
            "SPO_PARAMS",
            serde_json::to_string(cx.params()).unwrap_or_default(),
        );
        if let Some(s) = cx.seed() {
            c.env("SPO_SEED", s.to_string());
        }
        for i in cx.inputs() {
            c.env(
                format!(
                    "SPO_INPUT_{}",
                    i.stage.to_ascii_uppercase().replace('-', "_")
                ),
                &i.dir,
            );
        }
        let cannot_start =
            |e: std::io::Error| StageError::Failed(format!("cannot start `sh -c {cmd}`: {e}"));
        let group = ProcessGroup::new().map_err(cannot_start)?;
        let mut child = group.spawn(&mut c).map_err(cannot_start)?;
        drop(c); // our copies of the child's stdin and log handles
        let status = child.wait().map_err(|e| StageError::io(&log_path, e));
        // Ends whatever the command left running before its output is read or committed.
        drop(group);
        let status = status?;
        if !status.success() {
            return Err(StageError::Failed(format!(
                "`{cmd}` exited with {status}; last output:\n{}",
                tail(&log_path, 20)
            )));
        }
        let metrics = cx.out_dir().join("metrics.json");
        if metrics.exists() {
            let bytes = fs::read(&metrics).map_err(|e| StageError::io(&metrics, e))?;
            let map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes)
                .map_err(|e| {
                    StageError::Failed(format!(
                        "{}: not a JSON object of numbers: {e}",
                        metrics.display()
                    ))
                })?;
            for (k, v) in map {
                let x = v.as_f64().ok_or_else(|| {
                    StageError::Failed(format!(
                        "{}: metric `{k}` is not a number",
                        metrics.display()
                    ))
                })?;
                cx.metric(&k, x);
            }
        }
        Ok(())
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let mut s = String::new();
    if let Ok(mut f) = fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
