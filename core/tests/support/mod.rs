//! Stage kinds for the orchestrator's tests: tiny, deterministic, and counting their runs.

use std::sync::atomic::{AtomicU32, Ordering};

use spo_core::{ParamSpec, StageContext, StageError, StageKind};

/// Writes `value` to `out.txt`; `salt` changes the key but not the bytes. Records the threads
/// it was lent as a metric.
pub struct Emit;

impl StageKind for Emit {
    fn name(&self) -> &'static str {
        "emit"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "writes a number"
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![
            ParamSpec::int("value", 1).range(0.0, 100.0),
            ParamSpec::int("salt", 0),
            ParamSpec::choice("mode", &["plain", "fancy"], "plain"),
        ]
    }
    fn run(&self, cx: &mut StageContext) -> Result<(), StageError> {
        let v = cx.params().int("value")?;
        cx.write_artifact("out.txt", v.to_string().as_bytes())?;
        cx.metric("value", v as f64);
        cx.metric("threads", cx.threads() as f64);
        Ok(())
    }
}

/// The version of [`Sum`], changeable by a test to simulate a code change.
pub static SUM_VERSION: AtomicU32 = AtomicU32::new(1);

/// Sums its inputs' `out.txt` times `mult`.
pub struct Sum;

impl StageKind for Sum {
    fn name(&self) -> &'static str {
        "sum"
    }
    fn version(&self) -> u32 {
        SUM_VERSION.load(Ordering::SeqCst)
    }
    fn summary(&self) -> &'static str {
        "sums its inputs"
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![ParamSpec::float("mult", 1.0)]
    }
    fn run(&self, cx: &mut StageContext) -> Result<(), StageError> {
        let mut total = 0.0;
        for i in cx.inputs() {
            let p = i.file("out.txt")?;
            let s = std::fs::read_to_string(&p).map_err(|e| StageError::io(&p, e))?;
            total += s
                .trim()
                .parse::<f64>()
                .map_err(|e| StageError::Failed(e.to_string()))?;
        }
        let v = total * cx.params().float("mult")?;
        cx.write_artifact("out.txt", v.to_string().as_bytes())?;
        cx.metric("score", v);
        Ok(())
    }
}

/// A seeded kind: writes `seed + value`.
pub struct Train;

impl StageKind for Train {
    fn name(&self) -> &'static str {
        "train"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "a seeded stage"
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![ParamSpec::int("value", 0)]
    }
    fn seeded(&self) -> bool {
        true
    }
    fn run(&self, cx: &mut StageContext) -> Result<(), StageError> {
        let v = cx.params().int("value")? + cx.seed().unwrap_or(0) as i64;
        cx.write_artifact("out.txt", v.to_string().as_bytes())?;
        cx.metric("score", v as f64);
        Ok(())
    }
}

/// Always fails.
pub struct Fail;

impl StageKind for Fail {
    fn name(&self) -> &'static str {
        "fail"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "fails"
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![]
    }
    fn run(&self, cx: &mut StageContext) -> Result<(), StageError> {
        cx.write_artifact("partial.txt", b"half")?;
        Err(StageError::Failed("deliberate failure".into()))
    }
}

/// While set, [`Resume`] leaves a garbage checkpoint behind and fails.
pub static BREAK_CHECKPOINT: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Resumes from `scratch/ckpt` (a number) if there is one; writes `done`.
pub struct Resume;

impl StageKind for Resume {
    fn name(&self) -> &'static str {
        "resume"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "reads its checkpoint"
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![]
    }
    fn run(&self, cx: &mut StageContext) -> Result<(), StageError> {
        let ckpt = cx.scratch_dir().join("ckpt");
        if BREAK_CHECKPOINT.load(Ordering::SeqCst) {
            std::fs::write(&ckpt, b"\x00garbage").map_err(|e| StageError::io(&ckpt, e))?;
            return Err(StageError::Failed("killed mid-write".into()));
        }
        if let Ok(s) = std::fs::read_to_string(&ckpt) {
            s.parse::<u32>().map_err(|e| StageError::Checkpoint {
                path: ckpt.clone(),
                message: e.to_string(),
            })?;
        }
        cx.write_artifact("out.txt", b"done")
    }
}

pub fn registry() -> spo_core::Registry {
    spo_core::Registry::new(vec![
        Box::new(Emit),
        Box::new(Sum),
        Box::new(Train),
        Box::new(Fail),
        Box::new(Resume),
    ])
}
