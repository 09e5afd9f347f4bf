//! Caching semantics: what reruns after which change.

mod support;
use support as kinds;

use std::sync::Mutex;
use std::sync::atomic::Ordering;

use spo_core::{Event, Pipeline, Plan, RunOptions, Store, run::run};

/// Tests that bump [`kinds::SUM_VERSION`] must not overlap with others reading it.
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs `targets` and returns the labels (with seeds) of the cells that were computed.
fn run_labels(text: &str, store: &Store, targets: &[&str]) -> Vec<String> {
    let reg = kinds::registry();
    let pipe = Pipeline::parse("pipeline.toml", text, &reg).unwrap();
    let targets: Vec<String> = targets.iter().map(|s| s.to_string()).collect();
    let plan = Plan::build(&pipe, &reg, &targets).unwrap();
    let ran = Mutex::new(Vec::new());
    let summary = run(
        &pipe,
        &reg,
        store,
        &plan,
        &RunOptions {
            jobs: 2,
            ..Default::default()
        },
        &|e| {
            if let Event::Finished(n, _, _) = e {
                ran.lock().unwrap().push(n.display());
            }
        },
    )
    .unwrap();
    assert!(summary.failed.is_empty(), "{:?}", summary.failed);
    let mut v = ran.into_inner().unwrap();
    v.sort();
    v
}

const SWEEP: &str = r#"
[stage.a]
kind = "emit"
params = { value = 1 }

[stage.b]
kind = "sum"
needs = ["a"]

[sweep.s]
stage = "a"
grid = { value = VALUES }
"#;

fn sweep(values: &str) -> String {
    SWEEP.replace("VALUES", values)
}

#[test]
fn changing_one_sweep_cell_reruns_only_it_and_its_downstream() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(
        run_labels(&sweep("[1, 2, 3]"), &store, &["s"]),
        [
            "a[value=1]",
            "a[value=2]",
            "a[value=3]",
            "b[a.value=1]",
            "b[a.value=2]",
            "b[a.value=3]"
        ]
    );
    assert!(
        run_labels(&sweep("[1, 2, 3]"), &store, &["s"]).is_empty(),
        "a second run computes nothing"
    );
    assert_eq!(
        run_labels(&sweep("[1, 2, 4]"), &store, &["s"]),
        ["a[value=4]", "b[a.value=4]"]
    );
}

#[test]
fn adding_a_grid_value_runs_only_the_new_cells() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    run_labels(&sweep("[1, 2]"), &store, &["s"]);
    assert_eq!(
        run_labels(&sweep("[1, 2, 5]"), &store, &["s"]),
        ["a[value=5]", "b[a.value=5]"]
    );
}

#[test]
fn identical_upstream_bytes_leave_downstream_cached() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let text = |salt: i64| {
        format!(
            "[stage.a]\nkind = \"emit\"\nparams = {{ value = 3, salt = {salt} }}\n[stage.b]\nkind = \"sum\"\nneeds = [\"a\"]\n"
        )
    };
    assert_eq!(run_labels(&text(0), &store, &["b"]), ["a", "b"]);
    // `salt` changes a's key, so a reruns, but its bytes are the same: b stays cached.
    assert_eq!(run_labels(&text(1), &store, &["b"]), ["a"]);
}

#[test]
fn bumping_a_kind_version_reruns_that_kind_only() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let text = sweep("[1, 2]");
    run_labels(&text, &store, &["s"]);
    kinds::SUM_VERSION.store(2, Ordering::SeqCst);
    let rerun = run_labels(&text, &store, &["s"]);
    kinds::SUM_VERSION.store(1, Ordering::SeqCst);
    assert_eq!(rerun, ["b[a.value=1]", "b[a.value=2]"]);
}

#[test]
fn seeds_are_an_axis_and_adding_one_runs_only_it() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let text = |seeds: &str| {
        format!(
            "[pipeline]\nseeds = {seeds}\n[stage.a]\nkind = \"emit\"\n[stage.t]\nkind = \"train\"\nneeds = [\"a\"]\n[stage.b]\nkind = \"sum\"\nneeds = [\"t\"]\n"
        )
    };
    // `a` is not seeded: one cell shared by every seed; `t` and everything after it fan out.
    assert_eq!(
        run_labels(&text("[0, 1]"), &store, &["b"]),
        ["a", "b#0", "b#1", "t#0", "t#1"]
    );
    assert_eq!(
        run_labels(&text("[0, 1, 2]"), &store, &["b"]),
        ["b#2", "t#2"]
    );
}

#[test]
fn a_failed_cell_commits_nothing_and_stops_dependents() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let reg = kinds::registry();
    let text = "[stage.f]\nkind = \"fail\"\n[stage.b]\nkind = \"sum\"\nneeds = [\"f\"]\n[stage.a]\nkind = \"emit\"\n";
    let pipe = Pipeline::parse("p.toml", text, &reg).unwrap();
    let plan = Plan::build(&pipe, &reg, &["b".into(), "a".into()]).unwrap();
    let s = run(
        &pipe,
        &reg,
        &store,
        &plan,
        &RunOptions {
            keep_going: true,
            ..Default::default()
        },
        &|_| {},
    )
    .unwrap();
    assert_eq!(s.failed.len(), 1);
    assert!(s.failed[0].1.contains("deliberate failure"));
    assert_eq!(
        (s.ran, s.skipped),
        (1, 1),
        "with --keep-going the independent `a` still runs"
    );
    assert_eq!(store.keys().unwrap().len(), 1, "only `a` is committed");
    assert_eq!(
        std::fs::read_dir(dir.path().join("staging"))
            .unwrap()
            .count(),
        0,
        "the failed attempt's staging dir is gone"
    );
}
