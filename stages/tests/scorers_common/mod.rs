//! Helpers shared by the in-world scorer tests: a small world built once per test binary, and
//! running a stage kind detached with the committed outputs of earlier runs as its inputs.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sha2::{Digest, Sha256};
use spo_core::{FileEntry, Input, Manifest, Params, StageContext, StageError, StageKind, Value};
use spo_stages::world::WorldKind;

/// The resolved params of `kind` with `set` overriding defaults.
pub fn params(kind: &dyn StageKind, set: &[(&str, Value)]) -> Params {
    Params::resolve(&kind.params(), set).unwrap_or_else(|e| panic!("{}: {e}", kind.name()))
}

/// A detached context for `kind` with seed `seed`, writing into `dir/out` and checkpointing
/// into `dir/scratch`.
pub fn context(
    kind: &dyn StageKind,
    set: &[(&str, Value)],
    seed: Option<u64>,
    inputs: Vec<Input>,
    dir: &Path,
) -> StageContext {
    let cx = StageContext::detached(
        kind.name(),
        params(kind, set),
        seed,
        inputs,
        dir.join("out"),
        dir.join("scratch"),
    );
    std::fs::create_dir_all(cx.out_dir()).unwrap();
    cx
}

/// Runs `kind` detached (see [`context`]).
pub fn run(
    kind: &dyn StageKind,
    set: &[(&str, Value)],
    seed: Option<u64>,
    inputs: Vec<Input>,
    dir: &Path,
) -> (Result<(), StageError>, StageContext) {
    let mut cx = context(kind, set, seed, inputs, dir);
    let r = kind.run(&mut cx);
    (r, cx)
}

/// The output of a finished detached run as an input of kind `kind` (every file it wrote).
pub fn as_input(kind: &str, params: Params, out: &Path) -> Input {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(out).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            files.push(FileEntry {
                path: path.file_name().unwrap().to_string_lossy().into_owned(),
                sha256: hex::encode(Sha256::digest(&bytes)),
                bytes: bytes.len() as u64,
                info: None,
            });
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let manifest = Manifest {
        key: "k".into(),
        stage: kind.into(),
        kind: kind.into(),
        version: 1,
        cell: kind.into(),
        label: kind.into(),
        seed: None,
        params,
        inputs: vec![],
        files,
        digest: "d".into(),
        metrics: Default::default(),
        started: 0.0,
        seconds: 0.0,
        tool_version: "test".into(),
        host: "test".into(),
    };
    Input {
        stage: kind.into(),
        kind: kind.into(),
        dir: out.to_owned(),
        manifest,
    }
}

/// Runs `kind` and returns its output as an input for the next stage; panics on failure.
pub fn run_ok(
    kind: &dyn StageKind,
    set: &[(&str, Value)],
    seed: Option<u64>,
    inputs: Vec<Input>,
    dir: &Path,
) -> Input {
    let (r, cx) = run(kind, set, seed, inputs, dir);
    if let Err(e) = r {
        panic!("{} failed: {e}", kind.name());
    }
    as_input(kind.name(), cx.params().clone(), cx.out_dir())
}

/// A directory that lives as long as the test binary.
pub fn temp_dir() -> PathBuf {
    tempfile::tempdir().unwrap().keep()
}

/// A small world (200 training prompts), built once per test binary.
pub fn small_world() -> &'static Input {
    static WORLD: OnceLock<Input> = OnceLock::new();
    WORLD.get_or_init(|| {
        let set = [
            ("train_prompts", Value::Int(200)),
            ("validation_prompts", Value::Int(64)),
            ("pairs_per_prompt", Value::Int(2)),
            ("oracle_check", Value::Int(0)),
        ];
        run_ok(&WorldKind, &set, None, vec![], &temp_dir())
    })
}

/// Params of a fast, small CLIP run for the tests.
pub fn quick_clip() -> Vec<(&'static str, Value)> {
    vec![
        ("steps", Value::Int(120)),
        ("warmup", Value::Int(10)),
        ("checkpoint_every", Value::Int(10)),
        ("batch", Value::Int(32)),
        ("width", Value::Int(32)),
        ("heads", Value::Int(2)),
        ("projection", Value::Int(32)),
        ("eval_prompts", Value::Int(32)),
    ]
}

/// A clip-pretrain cell on the small world, built once per test binary.
pub fn small_clip() -> &'static Input {
    static CLIP: OnceLock<Input> = OnceLock::new();
    CLIP.get_or_init(|| {
        run_ok(
            &spo_stages::clip_train::ClipPretrain,
            &quick_clip(),
            Some(0),
            vec![small_world().clone()],
            &temp_dir(),
        )
    })
}

/// Params of a fast PickScore fine-tune for the tests.
pub fn quick_pickscore() -> Vec<(&'static str, Value)> {
    vec![
        ("steps", Value::Int(20)),
        ("warmup", Value::Int(4)),
        ("checkpoint_every", Value::Int(10)),
        ("batch", Value::Int(8)),
    ]
}

/// Params of a fast aesthetic head run for the tests.
pub fn quick_aesthetic() -> Vec<(&'static str, Value)> {
    vec![
        ("steps", Value::Int(40)),
        ("warmup", Value::Int(4)),
        ("checkpoint_every", Value::Int(10)),
        ("batch", Value::Int(64)),
        ("hidden", Value::List(vec![Value::Int(16)])),
    ]
}

/// A pickscore-train cell on the small world, built once per test binary.
pub fn small_pickscore() -> &'static Input {
    static CELL: OnceLock<Input> = OnceLock::new();
    CELL.get_or_init(|| {
        run_ok(
            &spo_stages::clip_train::PickScoreTrain,
            &quick_pickscore(),
            Some(0),
            vec![small_world().clone(), small_clip().clone()],
            &temp_dir(),
        )
    })
}

/// An aesthetic-train cell on the small world, built once per test binary.
pub fn small_aesthetic() -> &'static Input {
    static CELL: OnceLock<Input> = OnceLock::new();
    CELL.get_or_init(|| {
        run_ok(
            &spo_stages::aesthetic::AestheticTrain,
            &quick_aesthetic(),
            Some(0),
            vec![small_world().clone(), small_clip().clone()],
            &temp_dir(),
        )
    })
}

/// Runs `kind` with `steps` = `stop`, then with `steps` = `steps` in a new context on the same
/// scratch directory (as a rerun after a kill gets), and separately uninterrupted; returns the
/// bytes of output `file` of the uninterrupted and of the resumed run.
pub fn interrupted_and_straight(
    kind: &dyn StageKind,
    set: &[(&str, Value)],
    inputs: Vec<Input>,
    stop: i64,
    steps: i64,
    file: &str,
) -> (Vec<u8>, Vec<u8>) {
    let with = |n: i64| {
        let mut s: Vec<(&str, Value)> =
            set.iter().filter(|(k, _)| *k != "steps").cloned().collect();
        s.push(("steps", Value::Int(n)));
        s
    };
    let straight = run_ok(kind, &with(steps), Some(5), inputs.clone(), &temp_dir());
    let resumed = temp_dir();
    run_ok(kind, &with(stop), Some(5), inputs.clone(), &resumed);
    std::fs::remove_dir_all(resumed.join("out")).unwrap();
    let again = run_ok(kind, &with(steps), Some(5), inputs, &resumed);
    let read = |i: &Input| std::fs::read(i.dir.join(file)).unwrap();
    (read(&straight), read(&again))
}

/// A base model of 8 channels trained 4 steps on the small world, built once per test binary:
/// enough for stages that sample or train on it, not for quality.
pub fn tiny_base() -> &'static Input {
    static CELL: OnceLock<Input> = OnceLock::new();
    CELL.get_or_init(|| {
        let set = [
            ("steps", Value::Int(4)),
            ("batch", Value::Int(4)),
            ("warmup", Value::Int(1)),
            ("checkpoint_every", Value::Int(4)),
            ("channels", Value::List(vec![Value::Int(8), Value::Int(8)])),
        ];
        let inputs = vec![small_world().clone(), small_clip().clone()];
        run_ok(
            &spo_stages::base::BasePretrain,
            &set,
            Some(0),
            inputs,
            &temp_dir(),
        )
    })
}
