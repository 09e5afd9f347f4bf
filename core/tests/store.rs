//! The store: atomic commits, crash leftovers, verification, gc, tables and diffs.

mod support;

use spo_core::namemap::NameMap;
use spo_core::tables::{Format, render};
use spo_core::verify::Place;
use spo_core::{Pipeline, Plan, RunOptions, Store, diff, gc, index, run::run};

const PIPE: &str = r#"
[pipeline]
seeds = [0, 1, 2]

[stage.a]
kind = "emit"

[stage.t]
kind = "train"
needs = ["a"]

[sweep.vals]
stage = "t"
grid = { value = [10, 20] }

[table.tab]
sweep = "vals"
stage = "t"
metrics = ["score"]
"#;

fn setup(text: &str) -> (tempfile::TempDir, Store, Pipeline, spo_core::Registry) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let reg = support::registry();
    let pipe = Pipeline::parse("p.toml", text, &reg).unwrap();
    (dir, store, pipe, reg)
}

fn run_targets(pipe: &Pipeline, reg: &spo_core::Registry, store: &Store, targets: &[&str]) {
    let plan = Plan::build(
        pipe,
        reg,
        &targets.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
    )
    .unwrap();
    let s = run(pipe, reg, store, &plan, &RunOptions::default(), &|_| {}).unwrap();
    assert!(s.failed.is_empty(), "{:?}", s.failed);
}

#[test]
fn verify_catches_a_changed_byte() {
    let (_d, store, pipe, reg) = setup(PIPE);
    run_targets(&pipe, &reg, &store, &["t"]);
    assert!(store.verify(|_| {}).unwrap().is_empty());
    let key = store
        .keys()
        .unwrap()
        .into_iter()
        .find(|k| spo_core::Manifest::read(&store.cell_dir(k)).unwrap().stage == "t")
        .unwrap();
    std::fs::write(store.cell_dir(&key).join("out.txt"), b"99").unwrap();
    let damage = store.verify(|_| {}).unwrap();
    assert_eq!(damage.len(), 1);
    assert_eq!(
        (&damage[0].place, damage[0].path.as_str()),
        (&Place::Cell { key: key.clone() }, "out.txt")
    );
    assert!(
        damage[0].problem.contains("content changed"),
        "{}",
        damage[0].problem
    );
}

#[test]
fn an_unreadable_checkpoint_is_quarantined_and_the_cell_starts_over() {
    use std::sync::atomic::Ordering;
    let (dir, store, pipe, reg) = setup("[stage.r]\nkind = \"resume\"\n");
    let plan = Plan::build(&pipe, &reg, &["r".to_string()]).unwrap();
    support::BREAK_CHECKPOINT.store(true, Ordering::SeqCst);
    let s = run(&pipe, &reg, &store, &plan, &RunOptions::default(), &|_| {}).unwrap();
    support::BREAK_CHECKPOINT.store(false, Ordering::SeqCst);
    assert_eq!(s.failed.len(), 1);
    let s = run(&pipe, &reg, &store, &plan, &RunOptions::default(), &|_| {}).unwrap();
    assert!(s.failed.is_empty(), "{:?}", s.failed);
    assert_eq!(s.ran, 1);
    let quarantined: Vec<_> = std::fs::read_dir(dir.path().join("quarantine"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(quarantined.len(), 1);
    assert!(
        quarantined[0].join("ckpt").exists(),
        "the checkpoint is kept aside"
    );
}

#[test]
fn stale_staging_is_swept_and_manifests_describe_files() {
    let (dir, store, pipe, reg) = setup(PIPE);
    // A leftover from a killed attempt: nobody holds its key's lock.
    let leftover = dir.path().join("staging/deadbeef.1.2");
    std::fs::create_dir_all(&leftover).unwrap();
    std::fs::write(leftover.join("half.bin"), b"x").unwrap();
    run_targets(&pipe, &reg, &store, &["a"]);
    assert!(!leftover.exists());
    let key = store.keys().unwrap().pop().unwrap();
    let m = spo_core::Manifest::read(&store.cell_dir(&key)).unwrap();
    assert_eq!(m.files.len(), 1);
    assert_eq!(m.files[0].bytes, 1);
    assert_eq!(m.metrics["value"], 1.0);
    assert!(index::row_path(&dir.path().join("index"), &key, &m.cell, None).exists());
}

#[test]
fn a_cell_computing_alone_is_lent_the_whole_core_budget() {
    for jobs in [1, 3] {
        let (_d, store, pipe, reg) = setup("[stage.a]\nkind = \"emit\"\n");
        let plan = Plan::build(&pipe, &reg, &["a".to_string()]).unwrap();
        let opts = RunOptions {
            jobs,
            ..Default::default()
        };
        let s = run(&pipe, &reg, &store, &plan, &opts, &|_| {}).unwrap();
        assert!(s.failed.is_empty(), "{:?}", s.failed);
        let key = store.keys().unwrap().pop().unwrap();
        let m = spo_core::Manifest::read(&store.cell_dir(&key)).unwrap();
        assert_eq!(m.metrics["threads"], jobs as f64, "--jobs {jobs}");
    }
}

#[test]
fn table_has_mean_std_bold_best_and_names_missing_cells() {
    let (_d, store, pipe, reg) = setup(PIPE);
    let t = pipe.table("tab").unwrap();
    // Nothing run: every cell is missing, with the command that computes it.
    let r = render(
        &pipe,
        &reg,
        t,
        &index::read_metrics(&store.index_dir()).unwrap(),
        Format::Md,
    )
    .unwrap();
    assert_eq!(r.missing.len(), 6);
    assert_eq!(r.command, "spo-pipe run tab");
    run_targets(&pipe, &reg, &store, &["tab"]);
    let rows = index::read_metrics(&store.index_dir()).unwrap();
    let r = render(&pipe, &reg, t, &rows, Format::Md).unwrap();
    assert!(r.missing.is_empty());
    // value + seed over seeds 0, 1, 2: mean value + 1, std 1.
    assert!(
        r.text.contains("| value=10 | 11.000 ± 1.000 |"),
        "{}",
        r.text
    );
    assert!(
        r.text.contains("| value=20 | **21.000 ± 1.000** |"),
        "{}",
        r.text
    );
    let csv = render(&pipe, &reg, t, &rows, Format::Csv).unwrap().text;
    assert!(
        csv.starts_with("row,score_mean,score_std,score_n\n"),
        "{csv}"
    );
    assert!(csv.contains("value=20,21,1,3"), "{csv}");
    let tex = render(&pipe, &reg, t, &rows, Format::Latex).unwrap().text;
    assert!(tex.contains("\\textbf{21.000 $\\pm$ 1.000}"), "{tex}");
}

#[test]
fn a_metric_only_some_runs_have_is_summarised_over_those_runs() {
    let text = PIPE.replace("metrics = [\"score\"]", "metrics = [\"score\", \"extra\"]");
    let (_d, _store, pipe, reg) = setup(&text);
    let plan = Plan::build(&pipe, &reg, &["tab".to_string()]).unwrap();
    // One run per cell of `t` and seed: `score` on every seed, `extra` on seed 0 only.
    let rows: Vec<index::RunMetrics> = plan
        .nodes
        .iter()
        .filter(|n| &*n.stage_name == "t")
        .map(|n| {
            let seed = n.seed.unwrap_or(0);
            let mut metrics: NameMap<f64> = [("score".to_string(), seed as f64)].into();
            if seed == 0 {
                metrics.insert("extra".into(), 5.0);
            }
            index::RunMetrics {
                key: format!("k{seed}{}", n.cell),
                cell: n.cell.clone(),
                seed: n.seed,
                metrics,
            }
        })
        .collect();
    assert_eq!(rows.len(), 6);
    let r = render(&pipe, &reg, pipe.table("tab").unwrap(), &rows, Format::Csv).unwrap();
    assert!(r.missing.is_empty(), "{:?}", r.missing);
    assert_eq!(
        r.text,
        "row,score_mean,score_std,score_n,extra_mean,extra_std,extra_n\n\
         value=10,1,1,3,5,0,1\n\
         value=20,1,1,3,5,0,1\n"
    );
}

#[test]
fn an_unranked_metric_gets_no_best_mark_and_must_be_a_metric_of_the_table() {
    let text = PIPE.replace(
        "metrics = [\"score\"]",
        "metrics = [\"score\"]\nunranked = [\"score\"]",
    );
    let (_d, store, pipe, reg) = setup(&text);
    run_targets(&pipe, &reg, &store, &["tab"]);
    let rows = index::read_metrics(&store.index_dir()).unwrap();
    let r = render(&pipe, &reg, pipe.table("tab").unwrap(), &rows, Format::Md).unwrap();
    assert!(
        r.text.contains("| value=20 | 21.000 ± 1.000 |"),
        "{}",
        r.text
    );
    assert!(!r.text.contains("**21"), "{}", r.text);

    let bad = PIPE.replace(
        "metrics = [\"score\"]",
        "metrics = [\"score\"]\nunranked = [\"loss\"]",
    );
    let e = Pipeline::parse("p.toml", &bad, &reg)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`loss` is not among the table's metrics"), "{e}");
}

#[test]
fn diff_reports_params_and_metric_deltas_over_seeds() {
    let (_d, store, pipe, reg) = setup(PIPE);
    run_targets(&pipe, &reg, &store, &["vals"]);
    let rows = index::read_all(&store.index_dir()).unwrap();
    let a = diff::side(&pipe, &reg, &rows, "t@value=10").unwrap();
    let b = diff::side(&pipe, &reg, &rows, "t@value=20").unwrap();
    assert_eq!(a.seeds.len(), 3);
    let d = diff::diff(a, b);
    assert_eq!(d.params.len(), 1);
    assert!(d.params.contains_key("t.value"));
    let m = d.metrics.iter().find(|m| m.metric == "score").unwrap();
    assert_eq!(m.delta, Some(10.0));
    assert!(m.paired);
    assert_eq!(
        m.ci95,
        Some((10.0, 10.0)),
        "paired identical offsets give a tight interval"
    );
    assert!(
        diff::side(&pipe, &reg, &rows, "t@value=30")
            .unwrap_err()
            .message
            .contains("no committed run")
    );
}

#[test]
fn gc_keeps_what_targets_reach() {
    let (_d, store, pipe, reg) = setup(PIPE);
    run_targets(&pipe, &reg, &store, &["vals"]);
    let before = store.keys().unwrap().len();
    assert_eq!(before, 1 + 6);
    let plan = Plan::build(&pipe, &reg, &["t@value=10".into()]).unwrap();
    let dry = gc::gc(&reg, &store, &plan, true).unwrap();
    assert_eq!(dry.cells.len(), 3, "the value=20 cells");
    assert_eq!(
        store.keys().unwrap().len(),
        before,
        "a dry run removes nothing"
    );
    gc::gc(&reg, &store, &plan, false).unwrap();
    assert_eq!(store.keys().unwrap().len(), 4);
    assert!(store.verify(|_| {}).unwrap().is_empty());
}

#[test]
fn why_names_the_changed_param() {
    let (_d, store, mut pipe, reg) = setup(PIPE);
    run_targets(&pipe, &reg, &store, &["t"]);
    pipe.apply_set("t.value=5", &reg).unwrap();
    let plan = Plan::build(&pipe, &reg, &["t".into()]).unwrap();
    let t1 = plan
        .nodes
        .iter()
        .position(|n| n.label == "t" && n.seed == Some(1))
        .unwrap();
    let w = spo_core::explain::why(&reg, &store, &plan, t1).unwrap();
    assert_eq!(w.changes, st_changes(&w));
    let st = spo_core::explain::status(&reg, &store, &plan).unwrap();
    let t0 = st
        .iter()
        .find(|s| s.label == "t" && s.seed == Some(0))
        .unwrap();
    assert_eq!(t0.state, spo_core::explain::State::Stale);
    assert_eq!(t0.changes.len(), 1);
    assert_eq!(t0.changes[0].to_string(), "param value: 0 -> 5");
    assert_eq!(
        st.iter().find(|s| s.label == "a").unwrap().state,
        spo_core::explain::State::Cached
    );
}

fn st_changes(w: &spo_core::explain::Why) -> Vec<spo_core::explain::Change> {
    assert!(w.last_key.is_some() && w.key.is_some() && w.last_key != w.key);
    vec![spo_core::explain::Change::Param {
        name: "value".into(),
        old: Some(spo_core::Value::Int(0)),
        new: Some(spo_core::Value::Int(5)),
    }]
}

#[test]
fn a_cell_that_reuses_another_cells_key_gets_its_own_index_row() {
    let text = "[stage.a]\nkind = \"emit\"\n[stage.b]\nkind = \"sum\"\nneeds = [\"a\"]\n[sweep.s]\nstage = \"a\"\ngrid = { salt = [0, 1] }\n[table.t]\nsweep = \"s\"\nstage = \"b\"\nmetrics = [\"score\"]\n";
    let (_d, store, pipe, reg) = setup(text);
    run_targets(&pipe, &reg, &store, &["s"]);
    // `salt` changes a's key but not its bytes, so both b cells have one key.
    assert_eq!(store.keys().unwrap().len(), 3);
    let rows = index::read_all(&store.index_dir()).unwrap();
    assert_eq!(rows.iter().filter(|r| r.stage == "b").count(), 2);
    let rows = index::read_metrics(&store.index_dir()).unwrap();
    let r = render(&pipe, &reg, pipe.table("t").unwrap(), &rows, Format::Md).unwrap();
    assert!(r.missing.is_empty(), "{:?}", r.missing);
}
