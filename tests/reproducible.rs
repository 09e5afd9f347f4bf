//! Every artifact is byte-reproducible across processes and across kill -9 + resume.
//!
//! The default DAG at tiny sizes (every in-world kind: world, the five training kinds, spo,
//! gradspo, diffusion-dpo, mapo, d3po, ddpo, sample, score, curve) runs into fresh stores three times,
//! each in its own processes: straight through, straight through again, and with every training
//! stage killed (SIGKILL) in the middle of its training at a different step, then rerun until
//! it resumes and commits. All three stores must hold the same files with the same bytes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

mod support;

/// Overrides that keep every in-world kind but make the DAG take seconds, with a checkpoint
/// after every step or round so that a kill can land anywhere.
const TINY: &[&str] = &[
    "pipeline.seeds=[0]",
    "world.train_prompts=120",
    "world.validation_prompts=12",
    "text-encoder.weights=\"train\"",
    "text-encoder.steps=10",
    "text-encoder.batch=16",
    "text-encoder.eval_prompts=16",
    "clip.steps=30",
    "clip.checkpoint_every=1",
    "clip.batch=16",
    "clip.width=32",
    "clip.heads=2",
    "clip.projection=32",
    "clip.eval_prompts=16",
    "pickscore.steps=12",
    "pickscore.checkpoint_every=1",
    "pickscore.batch=8",
    "aesthetic.steps=30",
    "aesthetic.checkpoint_every=1",
    "base.weights=\"train\"",
    "base.steps=12",
    "base.batch=4",
    "base.checkpoint_every=1",
    "spm.steps=10",
    "spm.batch=4",
    "spm.checkpoint_every=1",
    "spo.rounds=6",
    "spo.prompts=2",
    "spo.steps=4",
    "spo.checkpoint_every=1",
    "sample-spo.prompts=2",
    "sample-spo.per_prompt=1",
    "sample-spo.steps=4",
    "dpo.steps=6",
    "dpo.batch=2",
    "dpo.checkpoint_every=1",
    "sample-dpo.prompts=2",
    "sample-dpo.per_prompt=1",
    "sample-dpo.steps=4",
    "d3po.rounds=4",
    "d3po.prompts=2",
    "d3po.steps=4",
    "d3po.train_batch=4",
    "d3po.checkpoint_every=1",
    "sample-d3po.prompts=2",
    "sample-d3po.per_prompt=1",
    "sample-d3po.steps=4",
    "ddpo.rounds=4",
    "ddpo.prompts=2",
    "ddpo.steps=4",
    "ddpo.train_batch=4",
    "ddpo.min_count=3",
    "ddpo.checkpoint_every=1",
    "sample-ddpo.prompts=2",
    "sample-ddpo.per_prompt=1",
    "sample-ddpo.steps=4",
    "mapo.steps=6",
    "mapo.batch=2",
    "mapo.checkpoint_every=1",
    "sample-mapo.prompts=2",
    "sample-mapo.per_prompt=1",
    "sample-mapo.steps=4",
    "gradspo.rounds=6",
    "gradspo.prompts=2",
    "gradspo.steps=4",
    "gradspo.threshold=0.0",
    "gradspo.checkpoint_every=1",
    "sample-gradspo.prompts=2",
    "sample-gradspo.per_prompt=1",
    "sample-gradspo.steps=4",
    "curve-spo.prompts=2",
    "curve-spo.per_prompt=1",
    "curve-spo.steps=4",
    "curve-dpo.prompts=2",
    "curve-dpo.per_prompt=1",
    "curve-dpo.steps=4",
];

/// The training stages in DAG order, their checkpoint name, and the checkpoint after which each
/// is killed.
const TRAINING: &[(&str, &str, usize)] = &[
    ("clip", "clip", 7),
    ("pickscore", "pickscore", 3),
    ("aesthetic", "aesthetic", 11),
    ("base", "base", 4),
    ("spm", "spm", 2),
    ("spo", "spo", 3),
    ("dpo", "dpo", 4),
    ("d3po", "d3po", 2),
    ("ddpo", "ddpo", 2),
    ("mapo", "mapo", 3),
    ("gradspo", "gradspo", 3),
];

const TARGETS: &[&str] = &[
    "run",
    "score-spo",
    "score-dpo",
    "score-d3po",
    "score-ddpo",
    "score-mapo",
    "score-gradspo",
    "curve-dpo",
    "winrate",
];

fn spo_pipe(store: &Path, args: &[&str]) -> Command {
    support::default_pipeline(store, TINY, args)
}

fn run_ok(store: &Path, args: &[&str]) -> Output {
    let out = spo_pipe(store, args).output().expect("spawn spo-pipe");
    assert!(
        out.status.success(),
        "spo-pipe {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `label[seed]/file` → SHA-256 of every committed file but the manifests (which hold timings).
fn digests(store: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for cell in std::fs::read_dir(store.join("store")).unwrap() {
        let cell = cell.unwrap().path();
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(cell.join("manifest.json")).unwrap()).unwrap();
        let name = format!("{}[{}]", manifest["label"], manifest["seed"]);
        let mut stack = vec![cell.clone()];
        while let Some(dir) = stack.pop() {
            for f in std::fs::read_dir(&dir).unwrap() {
                let path = f.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.file_name().is_some_and(|n| n != "manifest.json") {
                    let rel = path.strip_prefix(&cell).unwrap().display().to_string();
                    let sha = hex::encode(Sha256::digest(std::fs::read(&path).unwrap()));
                    out.insert(format!("{name}/{rel}"), sha);
                }
            }
        }
    }
    out
}

/// The checkpoint directories `step-*` of training `name` in the store's scratch area.
fn checkpoints(store: &Path, name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for cell in std::fs::read_dir(store.join("scratch"))
        .into_iter()
        .flatten()
    {
        let dir = cell.unwrap().path().join(name);
        for entry in std::fs::read_dir(dir).into_iter().flatten() {
            let path = entry.unwrap().path();
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("step-"))
            {
                out.push(path);
            }
        }
    }
    out
}

fn newest_step(store: &Path, name: &str) -> usize {
    checkpoints(store, name)
        .iter()
        .filter_map(|p| p.file_name()?.to_str()?.strip_prefix("step-")?.parse().ok())
        .max()
        .unwrap_or(0)
}

/// Runs `stage` and kills it with SIGKILL once its training has checkpointed step `at`.
fn kill_mid_training(store: &Path, stage: &str, name: &str, at: usize) {
    let mut child = spo_pipe(store, &["run", stage])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn spo-pipe");
    let t0 = Instant::now();
    while newest_step(store, name) < at {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("`{stage}` ended ({status}) before its checkpoint {at}");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "`{stage}` never reached step {at}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "`{stage}` finished before it was killed");
}

#[test]
fn every_kind_stores_the_same_bytes_in_other_processes_and_after_kill_9_and_resume() {
    let straight = tempfile::tempdir().unwrap();
    let again = tempfile::tempdir().unwrap();
    let killed = tempfile::tempdir().unwrap();
    run_ok(straight.path(), TARGETS);
    run_ok(again.path(), TARGETS);
    let want = digests(straight.path());
    assert!(want.len() > 20, "the DAG committed too little: {want:?}");
    assert_eq!(
        want,
        digests(again.path()),
        "a second process stored different bytes"
    );

    for &(stage, name, at) in TRAINING {
        kill_mid_training(killed.path(), stage, name, at);
        let out = run_ok(killed.path(), &["-v", "run", stage]);
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(
            log.contains(&format!("resuming {name} at step")),
            "`{stage}` did not resume after the kill:\n{log}"
        );
    }
    run_ok(killed.path(), TARGETS);
    let got = digests(killed.path());
    let differ: Vec<&String> = want
        .keys()
        .chain(got.keys())
        .filter(|k| want.get(*k) != got.get(*k))
        .collect();
    assert!(
        differ.is_empty(),
        "files that differ after kill -9 and resume: {differ:?}"
    );
}
