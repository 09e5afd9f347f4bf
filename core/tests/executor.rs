//! `[executor.cell."stage@param=value,…"]`: per-cell Slurm resources, read and checked with the
//! file, and resolved cell over stage over kind over defaults.

mod support;

use spo_core::executor::Resources;
use spo_core::{Pipeline, Plan};

const STAGES: &str = "[stage.a]\nkind = \"emit\"\n[stage.b]\nkind = \"sum\"\nneeds = [\"a\"]\n";

fn err(text: &str) -> String {
    Pipeline::parse("pipeline.toml", text, &support::registry())
        .expect_err("should be rejected")
        .to_string()
}

/// The rendered error starts at the file, line and column, and holds every fragment.
fn check(executor: &str, line: usize, col: usize, fragments: &[&str]) {
    let shown = err(&format!("{STAGES}{executor}"));
    assert!(
        shown.starts_with(&format!("pipeline.toml:{line}:{col}: ")),
        "{shown}"
    );
    for f in fragments {
        assert!(shown.contains(f), "`{f}` not in:\n{shown}");
    }
}

#[test]
fn a_selector_without_a_param_value_is_refused_with_the_stage_table_as_hint() {
    check(
        "[executor.cell.b]\ncpus = 2\n",
        6,
        16,
        &[
            "[executor.cell.\"b\"] names no param value",
            "hint: name cells as `stage@param=value`",
            "[executor.stage.b]",
        ],
    );
    check(
        "[executor.cell.\"b@\"]\ncpus = 2\n",
        6,
        16,
        &[
            "[executor.cell.\"b@\"] names no param value",
            "add `param=value`",
        ],
    );
}

#[test]
fn unknown_stages_params_and_keys_are_named_with_the_table() {
    check(
        "[executor.cell.\"c@value=2\"]\ncpus = 2\n",
        6,
        16,
        &["[executor.cell.\"c@value=2\"]", "no stage named `c`"],
    );
    check(
        "[executor.cell.\"b@mlt=2.0\"]\ncpus = 2\n",
        6,
        16,
        &[
            "[executor.cell.\"b@mlt=2.0\"]",
            "unknown param `mlt` for kind `sum`",
            "did you mean `mult`?",
        ],
    );
    // A param of an upstream stage, by its stage's name; a downstream one cannot select.
    check(
        "[executor.cell.\"a@b.mult=2.0\"]\ncpus = 2\n",
        6,
        16,
        &["stage `a` does not depend on `b`"],
    );
    check(
        "[executor.cell.\"b@a.value=200\"]\ncpus = 2\n",
        6,
        16,
        &["[executor.cell.\"b@a.value=200\"]", "param `value`"],
    );
    check(
        "[executor.cell.\"b@mult=2.0\"]\nmemory = \"4G\"\n",
        7,
        1,
        &[
            "unknown key of [executor.cell.\"b@mult=2.0\"] `memory`",
            "expected one of: `partition`, `account`, `cpus`, `mem`, `time`, `gpus`",
        ],
    );
}

#[test]
fn bad_resource_values_in_a_cell_table_are_refused_at_the_value() {
    check(
        "[executor.cell.\"b@mult=2.0\"]\nmem = \"4GB\"\n",
        7,
        7,
        &["`executor.cell.\"b@mult=2.0\".mem`: `4GB` is not a memory size Slurm reads"],
    );
    check(
        "[executor.cell.\"b@mult=2.0\"]\ntime = \"1h\"\n",
        7,
        8,
        &["`executor.cell.\"b@mult=2.0\".time`: `1h` is not a time limit"],
    );
    check(
        "[executor.cell.\"b@mult=2.0\"]\ncpus = 0\n",
        7,
        8,
        &["`executor.cell.\"b@mult=2.0\".cpus` must be an integer from 1 to 4096"],
    );
    check(
        "[executor.cell]\n\"b@mult=2.0\" = 3\n",
        7,
        16,
        &["[executor.cell.\"b@mult=2.0\"] section must be a table, found integer"],
    );
}

fn res(cpus: u64, mem: &str, time: &str) -> Resources {
    Resources {
        cpus: Some(cpus),
        mem: Some(mem.into()),
        time: Some(time.into()),
        ..Resources::default()
    }
}

/// The resources of every node of `b` (and `a`) for `targets`, by label.
fn resolved(executor: &str, targets: &[&str]) -> Vec<(String, Result<Resources, String>)> {
    let reg = support::registry();
    let pipe = Pipeline::parse("pipeline.toml", &format!("{STAGES}{executor}"), &reg).unwrap();
    let targets: Vec<String> = targets.iter().map(|t| t.to_string()).collect();
    let plan = Plan::build(&pipe, &reg, &targets).unwrap();
    let mut v: Vec<_> = (0..plan.nodes.len())
        .map(|i| {
            (
                plan.nodes[i].display(),
                pipe.executor.resources_for_cell(&plan, i),
            )
        })
        .collect();
    v.sort_by(|x, y| x.0.cmp(&y.0));
    v
}

const LAYERS: &str = r#"
[executor]
cpus = 1
mem = "1G"
time = "10"
[executor.kind_defaults.sum]
cpus = 2
mem = "2G"
[executor.stage.b]
mem = "3G"
[executor.cell."b@mult=2.0"]
mem = "8G"
[executor.cell."b@a.value=5"]
time = "20"
cpus = 3
[executor.cell."b@a.value=5,mult=2.0"]
time = "30"
[executor.cell."a@value=5"]
cpus = 4
"#;

#[test]
fn a_cell_beats_its_stage_its_kind_and_the_defaults_and_the_more_specific_cell_wins() {
    let got = resolved(
        LAYERS,
        &[
            "b@a.value=1",
            "b@a.value=5",
            "b@mult=2.0",
            "b@a.value=5,mult=2.0",
        ],
    );
    let want = [
        // a: the defaults (its default cell, which `b@a.value=1` names too), or its own cell
        // table.
        ("a[value=1]", res(1, "1G", "10")),
        ("a[value=5]", res(4, "1G", "10")),
        // b: stage over kind over defaults where no cell table names it…
        ("b[a.value=1]", res(2, "3G", "10")),
        // …one cell table over that (an upstream param selects too)…
        ("b[a.value=5]", res(3, "3G", "20")),
        ("b[mult=2.0]", res(2, "8G", "10")),
        // …and all three naming it: the two-condition table's time beats the one-condition
        // one's; the rest merges.
        ("b[a.value=5,mult=2.0]", res(3, "8G", "30")),
    ];
    let labels: Vec<&str> = got.iter().map(|(l, _)| l.as_str()).collect();
    let mut want_labels: Vec<&str> = want.iter().map(|(l, _)| *l).collect();
    want_labels.sort();
    assert_eq!(labels, want_labels);
    for (label, r) in want {
        let (_, g) = got.iter().find(|(l, _)| l == label).unwrap();
        assert_eq!(g.as_ref(), Ok(&r), "{label}");
    }
}

#[test]
fn equally_specific_tables_that_disagree_on_a_cell_are_an_error_naming_both() {
    let conflicting = r#"
[executor.cell."b@a.value=5"]
mem = "4G"
cpus = 2
[executor.cell."b@mult=2.0"]
mem = "8G"
cpus = 2
"#;
    let got = resolved(conflicting, &["b@a.value=5,mult=2.0", "b@a.value=5"]);
    let (_, both) = got
        .iter()
        .find(|(l, _)| l == "b[a.value=5,mult=2.0]")
        .unwrap();
    let e = both.as_ref().unwrap_err();
    assert!(
        e.contains("cell b[a.value=5,mult=2.0] of stage `b`")
            && e.contains("[executor.cell.\"b@a.value=5\"]")
            && e.contains("[executor.cell.\"b@mult=2.0\"]")
            && e.contains("give `mem` different values"),
        "{e}"
    );
    // Two that disagree with a third, agreeing with both, between them in the file.
    let apart = r#"
[executor.cell."b@a.value=5"]
mem = "4G"
[executor.cell."b@mult=2.0"]
cpus = 2
[executor.cell."b@a.salt=1"]
mem = "8G"
"#;
    let three = resolved(apart, &["b@a.value=5,a.salt=1,mult=2.0"]);
    let (_, r) = three.iter().find(|(l, _)| l.starts_with("b[")).unwrap();
    let e = r.as_ref().unwrap_err();
    assert!(
        e.contains("[executor.cell.\"b@a.value=5\"] and [executor.cell.\"b@a.salt=1\"]"),
        "{e}"
    );
    // Only one of them names this cell: no conflict.
    let (_, one) = got.iter().find(|(l, _)| l == "b[a.value=5]").unwrap();
    assert_eq!(one.as_ref().unwrap().mem.as_deref(), Some("4G"));
    // Equally specific, but agreeing where both set a field: merged, no error.
    let agreeing = r#"
[executor.cell."b@a.value=5"]
mem = "4G"
[executor.cell."b@mult=2.0"]
mem = "4G"
cpus = 2
"#;
    let got = resolved(agreeing, &["b@a.value=5,mult=2.0"]);
    let (_, r) = got.iter().find(|(l, _)| l.starts_with("b[")).unwrap();
    let r = r.as_ref().unwrap();
    assert_eq!((r.mem.as_deref(), r.cpus), (Some("4G"), Some(2)));
}
