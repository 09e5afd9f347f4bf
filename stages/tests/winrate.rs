//! The winrate kind on hand-built score tables: a method whose images are all right wins each
//! judgement; a stage that does not get exactly two score inputs, or whose two share no image, is
//! refused by name.

mod data_common;

use std::path::Path;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Float64Type;
use arrow_array::{Float64Array, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use data_common::{input, params, read, run};
use spo_core::Input;
use spo_stages::winrate::WinRate;
use spo_stages::world::WorldKind;

/// A score cell whose images (prompt i, seed 100 + i) all have `alignment` and detail 0.5.
fn scores(dir: &Path, stage: &str, first_prompt: i64, alignment: f64) -> Input {
    let d = dir.join(stage);
    std::fs::create_dir_all(&d).unwrap();
    let n = 20;
    let schema = Arc::new(Schema::new(vec![
        Field::new("prompt_index", DataType::Int64, false),
        Field::new("seed", DataType::Int64, false),
        Field::new("alignment", DataType::Float64, false),
        Field::new("detail", DataType::Float64, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from_iter_values(
                (0..n).map(|i| first_prompt + i),
            )),
            Arc::new(Int64Array::from_iter_values(
                (0..n).map(|i| 100 + first_prompt + i),
            )),
            Arc::new(Float64Array::from(vec![alignment; n as usize])),
            Arc::new(Float64Array::from(vec![0.5; n as usize])),
        ],
    )
    .unwrap();
    let f = std::fs::File::create(d.join("scores.parquet")).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(f, schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    input(stage, "score", &d, &[("scores.parquet", None)])
}

/// A world input with the default annotator.
fn world(dir: &Path) -> Input {
    let mut w = input("world", "world", dir, &[]);
    w.manifest.params = params(&WorldKind, &[]);
    w
}

#[test]
fn images_all_right_win_every_judgement() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = vec![
        world(dir.path()),
        scores(dir.path(), "score-a", 0, 1.0),
        scores(dir.path(), "score-b", 0, 0.0),
    ];
    let (r, _) = run(&WinRate, &[], inputs, dir.path());
    r.unwrap();
    let batches = read(&dir.path().join("out/judgements.parquet"));
    let wins: Vec<f64> = batches
        .iter()
        .flat_map(|b| {
            let c = b.column_by_name("a_wins").unwrap();
            c.as_primitive::<Float64Type>().values().to_vec()
        })
        .collect();
    assert_eq!(wins, vec![1.0; 20], "A, right everywhere, wins every image");
}

#[test]
fn one_score_input_or_no_shared_image_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (r, _) = run(
        &WinRate,
        &[],
        vec![world(dir.path()), scores(dir.path(), "score-a", 0, 1.0)],
        dir.path(),
    );
    let e = r.expect_err("one score input").to_string();
    assert!(
        e.contains("needs exactly two `score` stages (A then B), has 1"),
        "{e}"
    );

    let inputs = vec![
        world(dir.path()),
        scores(dir.path(), "score-a", 0, 1.0),
        scores(dir.path(), "score-late", 1000, 1.0),
    ];
    let (r, _) = run(&WinRate, &[], inputs, dir.path());
    let e = r.expect_err("disjoint images").to_string();
    assert!(
        e.contains("`score-a` and `score-late` have no image of the same prompt and seed"),
        "{e}"
    );
}
