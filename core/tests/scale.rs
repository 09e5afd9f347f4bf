//! A 100,000-cell sweep through loading, planning, tables and a dry run. Not timed: a verb
//! that turns quadratic again makes this test run for hours instead of seconds.

mod support;

use spo_core::tables::{Format, render};
use spo_core::{Pipeline, Plan, RunOptions, Store, run::run};

/// `a` swept over a 1000 × 50 grid, `b` reading each of its cells: 100,000 cells.
fn pipeline() -> String {
    let salts: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
    let values: Vec<String> = (0..50).map(|i| i.to_string()).collect();
    format!(
        r#"
[stage.a]
kind = "emit"
[stage.b]
kind = "sum"
needs = ["a"]
[sweep.grid]
stage = "a"
grid = {{ salt = [{}], value = [{}] }}
[table.t]
sweep = "grid"
stage = "b"
metrics = ["score"]
"#,
        salts.join(", "),
        values.join(", ")
    )
}

#[test]
fn a_100k_cell_grid_plans_renders_and_dry_runs() {
    let reg = support::registry();
    let pipe = Pipeline::parse("p.toml", &pipeline(), &reg).unwrap();
    assert_eq!(pipe.sweep("grid").unwrap().cells.len(), 50_000);
    let plan = Plan::build(&pipe, &reg, &["grid".to_string()]).unwrap();
    assert_eq!(plan.nodes.len(), 100_000);
    assert_eq!(plan.lineage(plan.nodes.len() - 1).len(), 2);

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let table = render(&pipe, &reg, pipe.table("t").unwrap(), &[], Format::Csv).unwrap();
    assert_eq!(table.missing.len(), 50_000);

    let opts = RunOptions {
        jobs: 2,
        dry_run: true,
        ..Default::default()
    };
    let s = run(&pipe, &reg, &store, &plan, &opts, &|_| {}).unwrap();
    assert_eq!(s.would_run, 100_000);
}

/// `status` resolves a plan a wave at a time, a wide wave split over threads: 1,100 committed
/// `a` cells (the first wave), their 1,100 `b` readers (the second), one `a` cell removed and
/// one damaged behind the store's back. Every state must be what a one-at-a-time walk gives.
#[test]
fn status_in_waves_sees_every_cell_as_it_is() {
    use spo_core::explain::{State, status};

    let reg = support::registry();
    let cells = 1100;
    let salts: Vec<String> = (0..cells).map(|i| i.to_string()).collect();
    let only_a = format!(
        "[stage.a]\nkind = \"emit\"\n[sweep.many]\nstage = \"a\"\ngrid = {{ salt = [{}] }}\n",
        salts.join(", ")
    );
    let both = format!("{only_a}[stage.b]\nkind = \"sum\"\nneeds = [\"a\"]\n");
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();

    let pipe_a = Pipeline::parse("a.toml", &only_a, &reg).unwrap();
    let plan_a = Plan::build(&pipe_a, &reg, &["many".to_string()]).unwrap();
    let s = run(
        &pipe_a,
        &reg,
        &store,
        &plan_a,
        &RunOptions::default(),
        &|_| {},
    )
    .unwrap();
    assert_eq!(s.ran, cells);

    let pipe = Pipeline::parse("p.toml", &both, &reg).unwrap();
    let plan = Plan::build(&pipe, &reg, &["many".to_string()]).unwrap();
    assert_eq!(plan.nodes.len(), 2 * cells);
    let st = status(&reg, &store, &plan).unwrap();
    let a_key = |i: usize| {
        st.iter()
            .filter(|s| plan.nodes[s.node].stage_name.as_ref() == "a")
            .nth(i)
            .and_then(|s| s.key.clone())
            .unwrap()
    };
    // One `a` cell gone, another's manifest damaged, behind the store's back.
    let (gone, damaged) = (a_key(7), a_key(1000));
    std::fs::remove_dir_all(dir.path().join("store").join(&gone)).unwrap();
    std::fs::write(
        dir.path()
            .join("store")
            .join(&damaged)
            .join("manifest.json"),
        b"{",
    )
    .unwrap();

    let st = status(&reg, &Store::open(dir.path()).unwrap(), &plan).unwrap();
    let count = |stage: &str, state: State, keyed: bool| {
        st.iter()
            .filter(|s| plan.nodes[s.node].stage_name.as_ref() == stage)
            .filter(|s| s.state == state && s.key.is_some() == keyed)
            .count()
    };
    assert_eq!(count("a", State::Cached, true), cells - 2);
    // It ran before (its slot points at the key), so it is stale, not cached.
    assert_eq!(count("a", State::Stale, true), 1, "the removed cell");
    assert_eq!(count("a", State::Damaged, true), 1, "the damaged cell");
    // A `b` cell is keyed exactly where its `a` cell is still committed.
    assert_eq!(count("b", State::Missing, true), cells - 2);
    assert_eq!(count("b", State::Missing, false), 2);
    for s in &st {
        let n = &plan.nodes[s.node];
        if n.stage_name.as_ref() == "b" {
            let input = &st[n.inputs[0]];
            assert_eq!(s.key.is_some(), input.state == State::Cached, "{}", n.label);
        }
    }
}
