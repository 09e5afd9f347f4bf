//! `RunOptions::elsewhere`: cells another process computes (the binary gives a cell whose
//! `[executor]` device is not the run's own to a child `spo-pipe`). Here the other process is
//! a second run of the same plan on its own thread, computing the one key it is given, as the
//! child does with `run --only-key`.

mod support;

use std::sync::{Arc, Mutex};

use spo_core::run::{Elsewhere, run};
use spo_core::{Event, Pipeline, Plan, RunOptions, Store};

const PIPE: &str = r#"
[stage.a]
kind = "emit"
params = { value = 2 }

[stage.b]
kind = "sum"
needs = ["a"]

[stage.c]
kind = "sum"
needs = ["b"]
"#;

/// Runs every stage with `elsewhere` given for the cells of stage `b`; the labels this run
/// computed itself (finished, in order) and the summary's failures.
fn run_with(
    store: &Store,
    elsewhere: impl Fn(&Pipeline, &Plan, &str) -> Result<(), String> + Send + Sync + 'static,
) -> (Vec<String>, Vec<(String, String)>, usize) {
    let reg = support::registry();
    let pipe = Pipeline::parse("pipeline.toml", PIPE, &reg).unwrap();
    let plan = Plan::build(&pipe, &reg, &[]).unwrap();
    let b: Vec<usize> = (0..plan.nodes.len())
        .filter(|&i| &*plan.nodes[i].stage_name == "b")
        .collect();
    let (p2, plan2) = (pipe.clone(), plan.clone());
    let hook: Arc<Elsewhere> =
        Arc::new(move |id: usize, key: &str| b.contains(&id).then(|| elsewhere(&p2, &plan2, key)));
    let finished = Mutex::new(Vec::new());
    let s = run(
        &pipe,
        &reg,
        store,
        &plan,
        &RunOptions {
            jobs: 2,
            keep_going: true,
            elsewhere: Some(hook),
            ..Default::default()
        },
        &|e| {
            if let Event::Finished(n, _, _) = e {
                finished.lock().unwrap().push(n.display());
            }
        },
    )
    .unwrap();
    (finished.into_inner().unwrap(), s.failed, s.ran)
}

/// The other process: a run of the same plan that computes only `key`.
fn compute_only(store: &Store, pipe: &Pipeline, plan: &Plan, key: &str) -> Vec<String> {
    let reg = support::registry();
    let ran = Mutex::new(Vec::new());
    let s = run(
        pipe,
        &reg,
        store,
        plan,
        &RunOptions {
            only_key: Some(key.to_owned()),
            ..Default::default()
        },
        &|e| {
            if let Event::Started(n) = e {
                ran.lock().unwrap().push(n.display());
            }
        },
    )
    .unwrap();
    assert!(s.failed.is_empty(), "{:?}", s.failed);
    ran.into_inner().unwrap()
}

#[test]
fn a_cell_given_elsewhere_is_computed_there_once_and_its_readers_go_on_here() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let there = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&there);
    let (here, failed, ran) = run_with(&Store::open(&root).unwrap(), move |pipe, plan, key| {
        let store = Store::open(&root).unwrap();
        log.lock()
            .unwrap()
            .extend(compute_only(&store, pipe, plan, key));
        Ok(())
    });
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(
        *there.lock().unwrap(),
        ["b"],
        "b alone was computed elsewhere"
    );
    assert_eq!(
        here,
        ["a", "b", "c"],
        "b counts as computed for this run, c read it"
    );
    assert_eq!(ran, 3);
    // Nothing is left to do, and the cells are the ones a plain run makes.
    let plain = tempfile::tempdir().unwrap();
    let reg = support::registry();
    let pipe = Pipeline::parse("pipeline.toml", PIPE, &reg).unwrap();
    let plan = Plan::build(&pipe, &reg, &[]).unwrap();
    let plain_store = Store::open(plain.path()).unwrap();
    run(
        &pipe,
        &reg,
        &plain_store,
        &plan,
        &RunOptions::default(),
        &|_| {},
    )
    .unwrap();
    let mut keys = Store::open(dir.path()).unwrap().keys().unwrap();
    let mut plain_keys = plain_store.keys().unwrap();
    keys.sort();
    plain_keys.sort();
    assert_eq!(keys, plain_keys);
}

#[test]
fn a_failure_elsewhere_or_no_commit_fails_the_cell_and_skips_its_readers() {
    for (ended, says) in [
        (
            Err("the child spo-pipe on cuda:1 ended with exit status: 1".to_owned()),
            "cuda:1",
        ),
        (Ok(()), "ended without committing"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let ended2 = ended.clone();
        let (here, failed, _) = run_with(&store, move |_, _, _| ended2.clone());
        assert_eq!(here, ["a"], "{ended:?}");
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert_eq!(failed[0].0, "b");
        assert!(failed[0].1.contains(says), "{failed:?}");
        assert_eq!(store.keys().unwrap().len(), 1, "only a is stored");
    }
}
