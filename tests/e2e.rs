//! The whole default DAG, shrunken to tiny steps, end to end: every table of pipeline.toml is
//! filled, and a second run computes nothing.

use std::process::Output;

mod support;

/// Overrides that keep every stage of the default pipeline but make it take seconds.
const TINY: &[&str] = &[
    "pipeline.seeds=[0,1]",
    "world.train_prompts=200",
    "world.validation_prompts=20",
    "text-encoder.weights=\"train\"",
    "text-encoder.steps=10",
    "clip.steps=10",
    "pickscore.steps=3",
    "aesthetic.steps=3",
    "base.weights=\"train\"",
    "base.steps=2",
    "base.batch=8",
    "spm.steps=2",
    "spm.batch=4",
    "spo.rounds=1",
    "spo.prompts=2",
    "spo.steps=4",
    "sample-base.prompts=2",
    "sample-base.per_prompt=1",
    "sample-base.steps=4",
    "sample-spo.prompts=2",
    "sample-spo.per_prompt=1",
    "sample-spo.steps=4",
    "calibrate-judges.pairs=16",
    "dpo.steps=2",
    "dpo.batch=2",
    "sample-dpo.prompts=2",
    "sample-dpo.per_prompt=1",
    "sample-dpo.steps=4",
    "d3po.rounds=1",
    "d3po.prompts=2",
    "d3po.steps=4",
    "sample-d3po.prompts=2",
    "sample-d3po.per_prompt=1",
    "sample-d3po.steps=4",
    "ddpo.rounds=1",
    "ddpo.prompts=2",
    "ddpo.steps=4",
    "sample-ddpo.prompts=2",
    "sample-ddpo.per_prompt=1",
    "sample-ddpo.steps=4",
    "mapo.steps=2",
    "mapo.batch=2",
    "sample-mapo.prompts=2",
    "sample-mapo.per_prompt=1",
    "sample-mapo.steps=4",
    "gradspo.rounds=1",
    "gradspo.prompts=2",
    "gradspo.steps=4",
    "sample-gradspo.prompts=2",
    "sample-gradspo.per_prompt=1",
    "sample-gradspo.steps=4",
];

fn spo_pipe(store: &std::path::Path, args: &[&str]) -> Output {
    support::default_pipeline(store, TINY, args)
        .output()
        .expect("spawn spo-pipe")
}

#[test]
fn the_default_dag_fills_every_table_and_a_second_run_does_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = spo_pipe(dir.path(), &["run", "ablations", "--jobs", "2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");

    let out = spo_pipe(dir.path(), &["tables"]);
    let tables = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "missing cells:\n{}\n{tables}",
        String::from_utf8_lossy(&out.stderr)
    );
    for t in [
        "Table 2",
        "Table 4",
        "Table 5",
        "Table 6",
        "Table 7",
        "Table 8",
        "Table 9",
        "Calibration: the base model",
        "Calibration: the judges",
        "Calibration: SPO",
    ] {
        assert!(tables.contains(t), "{t} not rendered:\n{tables}");
    }
    assert!(!tables.contains('—'), "a table cell is empty:\n{tables}");
    assert!(
        tables.contains("| SPO |")
            && tables.contains("| k=6 |")
            && tables.contains("| t_range=[250,500] |"),
        "{tables}"
    );

    let out = spo_pipe(dir.path(), &["run", "ablations"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.contains(" 0 ran,"),
        "the second run computed something:\n{err}"
    );
    assert!(spo_pipe(dir.path(), &["verify"]).status.success());
}
