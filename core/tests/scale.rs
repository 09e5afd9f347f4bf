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
