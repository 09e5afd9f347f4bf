//! Every bad pipeline.toml gets an error at its file, line and column, with a way to fix it.

mod support;

use spo_core::{ConfigError, Pipeline, Plan};

fn err(text: &str) -> ConfigError {
    Pipeline::parse("pipeline.toml", text, &support::registry()).expect_err("should be rejected")
}

/// Asserts position and that the rendered message contains every fragment.
fn check(text: &str, line: usize, col: usize, fragments: &[&str]) {
    let e = err(text);
    let shown = e.to_string();
    assert_eq!((e.line, e.col), (line, col), "{shown}");
    assert!(
        shown.starts_with(&format!("pipeline.toml:{line}:{col}: ")),
        "{shown}"
    );
    for f in fragments {
        assert!(shown.contains(f), "`{f}` not in:\n{shown}");
    }
}

#[test]
fn malformed_toml() {
    check(
        "[stage.a]\nkind = \"emit\n",
        2,
        13,
        &["invalid TOML", "hint"],
    );
}

#[test]
fn unknown_kind_suggests_the_nearest() {
    check(
        "[stage.a]\nkind = \"emitt\"\n",
        2,
        8,
        &["unknown stage kind `emitt`", "did you mean `emit`?"],
    );
}

#[test]
fn unknown_param_suggests_the_nearest() {
    check(
        "[stage.a]\nkind = \"emit\"\nparams = { valeu = 3 }\n",
        3,
        12,
        &[
            "unknown param `valeu` for kind `emit`",
            "did you mean `value`?",
        ],
    );
}

#[test]
fn mistyped_param() {
    check(
        "[stage.a]\nkind = \"emit\"\n[stage.a.params]\nvalue = \"three\"\n",
        4,
        9,
        &[
            "param `value` of stage `a`",
            "expected an integer in [0, 100], found a string",
        ],
    );
}

#[test]
fn out_of_range_param() {
    check(
        "[stage.a]\nkind = \"emit\"\nparams = { value = 101 }\n",
        3,
        20,
        &["101 is out of range", "[0, 100]"],
    );
}

#[test]
fn choice_param() {
    check(
        "[stage.a]\nkind = \"emit\"\nparams = { mode = \"odd\" }\n",
        3,
        19,
        &["`odd` is not one of \"plain\", \"fancy\""],
    );
}

#[test]
fn needs_naming_nothing() {
    check(
        "[stage.a]\nkind = \"emit\"\n[stage.b]\nkind = \"sum\"\nneeds = [\"aa\"]\n",
        5,
        10,
        &[
            "stage `b` needs `aa`, which is not a stage",
            "did you mean `a`?",
        ],
    );
}

#[test]
fn cycle_is_named_with_its_path() {
    check(
        "[stage.a]\nkind = \"sum\"\nneeds = [\"b\"]\n[stage.b]\nkind = \"sum\"\nneeds = [\"a\"]\n",
        1,
        8,
        &["circular dependency `a -> b -> a`"],
    );
}

#[test]
fn unknown_stage_key() {
    check(
        "[stage.a]\nkind = \"emit\"\nneed = [\"x\"]\n",
        3,
        1,
        &["unknown key of a stage `need`", "did you mean `needs`?"],
    );
}

#[test]
fn sweep_value_out_of_range() {
    check(
        "[stage.a]\nkind = \"emit\"\n[sweep.s]\nstage = \"a\"\ngrid = { value = [1, 200] }\n",
        5,
        22,
        &["sweep `s`, param `value`", "200 is out of range"],
    );
}

#[test]
fn zip_lengths_must_match() {
    check(
        "[stage.a]\nkind = \"emit\"\n[sweep.s]\nstage = \"a\"\nzip = { value = [1, 2], salt = [1] }\n",
        5,
        32,
        &["`zip` needs equal lengths"],
    );
}

#[test]
fn table_metric_and_names() {
    check(
        "[stage.a]\nkind = \"emit\"\n[table.t]\nrows = { A = \"b\" }\nmetrics = [\"value\"]\n",
        4,
        14,
        &["row `A` names `b`, which is not a stage"],
    );
    check(
        "[stage.a]\nkind = \"emit\"\n[table.t]\nrows = { A = \"a@value=x\" }\nmetrics = [\"value\"]\n",
        4,
        14,
        &["row `A`: `a@value=x`: param `value`"],
    );
    check(
        "[stage.a]\nkind = \"emit\"\n[table.t]\nrows = { A = \"a@vlue=3\" }\nmetrics = [\"value\"]\n",
        4,
        14,
        &["unknown param `vlue`", "did you mean `value`?"],
    );
    check(
        "[stage.a]\nkind = \"emit\"\n[target.a]\nincludes = [\"a\"]\n",
        3,
        9,
        &["`a` names both a stage and a target"],
    );
}

#[test]
fn set_overrides_are_validated() {
    let reg = support::registry();
    let mut p = Pipeline::parse("p.toml", "[stage.a]\nkind = \"emit\"\n", &reg).unwrap();
    p.apply_set("a.value=7", &reg).unwrap();
    assert_eq!(p.stage("a").unwrap().params.int("value").unwrap(), 7);
    let e = p.apply_set("a.value=700", &reg).unwrap_err();
    assert_eq!((e.file.as_str(), e.col), ("--set", 9));
    assert!(e.to_string().contains("700 is out of range"), "{e}");
    let e = p.apply_set("a.vale=1", &reg).unwrap_err();
    assert!(e.to_string().contains("did you mean `value`?"), "{e}");
    let e = p.apply_set("zz.value=1", &reg).unwrap_err();
    assert!(e.to_string().contains("no stage named `zz`"), "{e}");
    p.apply_set("pipeline.seeds=[3,4]", &reg).unwrap();
    assert_eq!(p.seeds, [3, 4]);
}

#[test]
fn set_errors_point_at_their_column_in_the_argument() {
    let reg = support::registry();
    let mut p = Pipeline::parse("p.toml", "[stage.a]\nkind = \"emit\"\n", &reg).unwrap();
    let at = |p: &mut Pipeline, arg: &str| {
        let e = p.apply_set(arg, &reg).unwrap_err();
        assert_eq!(e.file, "--set", "{e}");
        (e.col, e.to_string())
    };
    // a non-ASCII stage name after a space: no panic, the caret under the name
    let (col, shown) = at(&mut p, " é.x=1");
    assert_eq!(col, 2, "{shown}");
    assert!(shown.contains("no stage named `é`"), "{shown}");
    // an item inside a list value, and values and params behind spaces
    assert_eq!(at(&mut p, "pipeline.seeds=[0, -1]").0, 20);
    assert_eq!(at(&mut p, "  a.value = 700").0, 13);
    assert_eq!(at(&mut p, " a . value=1").0, 2);
    assert_eq!(at(&mut p, "  a.vale=1").0, 5);
    // a malformed value: where TOML stopped, past the comma, not the start of the value
    assert_eq!(at(&mut p, "a.value=[1,").0, 12);
    p.apply_set("  a.value = 7 ", &reg).unwrap();
    assert_eq!(p.stage("a").unwrap().params.int("value").unwrap(), 7);
}

#[test]
fn valid_pipeline_expands_sweeps_with_grid_and_zip() {
    let reg = support::registry();
    let p = Pipeline::parse("p.toml", "[stage.a]\nkind = \"emit\"\n[sweep.g]\nstage = \"a\"\ngrid = { value = [1, 2], salt = [0, 1, 2] }\n[sweep.z]\nstage = \"a\"\nzip = { value = [1, 2], salt = [5, 6] }\n", &reg).unwrap();
    assert_eq!(p.sweep("g").unwrap().cells.len(), 6);
    assert_eq!(p.sweep("z").unwrap().cells.len(), 2);
}

#[test]
fn a_sweep_table_plans_its_stage_per_cell_and_a_sweep_everything_downstream() {
    let reg = support::registry();
    let text = r#"
[stage.a]
kind = "emit"
[stage.b]
kind = "sum"
needs = ["a"]
[stage.c]
kind = "sum"
needs = ["a"]
[sweep.s]
stage = "a"
grid = { value = [1, 2, 3] }
[table.t]
title = "t"
sweep = "s"
stage = "b"
metrics = ["sum"]
"#;
    let p = Pipeline::parse("p.toml", text, &reg).unwrap();
    let stages_of = |target: &str| {
        let plan = Plan::build(&p, &reg, &[target.to_owned()]).unwrap();
        let mut v: Vec<String> = plan
            .nodes
            .iter()
            .map(|n| p.stages[n.stage].name.clone())
            .collect();
        v.sort();
        v
    };
    // the table shows b: three cells of a and of b, none of c
    assert_eq!(stages_of("t"), ["a", "a", "a", "b", "b", "b"]);
    // the sweep itself fans out through everything downstream of a
    assert_eq!(
        stages_of("s"),
        ["a", "a", "a", "b", "b", "b", "c", "c", "c"]
    );
}

#[test]
fn a_table_plot_names_two_of_its_metrics() {
    let table = |plot: &str| {
        format!(
            "[stage.a]\nkind = \"emit\"\n[table.t]\nrows = {{ \"A\" = \"a\" }}\nmetrics = [\"x\", \"y\"]\nplot = {plot}\n"
        )
    };
    let pipe = Pipeline::parse(
        "pipeline.toml",
        &table("[\"x\", \"y\"]"),
        &support::registry(),
    )
    .unwrap();
    assert_eq!(
        pipe.table("t").unwrap().plot,
        Some(("x".to_owned(), "y".to_owned()))
    );
    check(
        &table("[\"x\", \"z\"]"),
        6,
        14,
        &["`z` is not among the table's metrics", "plot two of"],
    );
    check(
        &table("[\"x\", \"y\", \"x\"]"),
        6,
        8,
        &["`plot` names two metrics: [x, y]"],
    );
}
