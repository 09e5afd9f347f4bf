//! The `pickapic` stage on a small synthetic fixture in Pick-a-Pic v1's exact schema, written
//! by the test itself with real JPEG bytes; and its refusals: a missing column, undecodable
//! image bytes, a truncated file — each naming the shard (and row), storing no table.

mod data_common;

use std::path::Path;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Float64Type;
use arrow_array::{
    ArrayRef, BinaryArray, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray, TimestampNanosecondArray,
};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use data_common::{columns, input, read, rows, run};
use parquet::arrow::ArrowWriter;
use spo_core::Value;
use spo_stages::pickapic::{COLUMNS, PickAPic};

fn jpeg(seed: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(24, 16, |x, y| {
        image::Rgb([seed.wrapping_mul(40), (x * 10) as u8, (y * 15) as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

/// Writes a Pick-a-Pic v1 shard of `n` rows, as `datasets` exports it (all 19 columns),
/// leaving out `drop` and putting garbage in `jpg_0` of row `garbage`.
fn fixture(path: &Path, n: usize, drop: Option<&str>, garbage: Option<usize>) {
    fixture_with(path, n, drop, garbage, TimeUnit::Nanosecond);
}

/// [`fixture`] with `created_at` in another time unit (older pyarrow writes microseconds).
fn fixture_with(path: &Path, n: usize, drop: Option<&str>, garbage: Option<usize>, unit: TimeUnit) {
    let s = |f: &dyn Fn(usize) -> String| {
        Arc::new(StringArray::from_iter_values((0..n).map(f))) as ArrayRef
    };
    let labels: Vec<(f64, f64)> = (0..n)
        .map(|i| [(1.0, 0.0), (0.0, 1.0), (0.5, 0.5)][i % 3])
        .collect();
    let all: Vec<(&str, DataType, ArrayRef)> = vec![
        (
            "are_different",
            DataType::Boolean,
            Arc::new(BooleanArray::from(vec![true; n])),
        ),
        (
            "best_image_uid",
            DataType::Utf8,
            s(&|i| match i % 3 {
                0 => format!("a{i}"),
                1 => format!("b{i}"),
                _ => String::new(),
            }),
        ),
        (
            "caption",
            DataType::Utf8,
            s(&|i| format!("a cat number {}", i / 2)),
        ),
        (
            "created_at",
            DataType::Timestamp(unit, None),
            match unit {
                TimeUnit::Microsecond => Arc::new(TimestampMicrosecondArray::from_iter_values(
                    (0..n).map(|i| 1_683_000_000_000_000 + i as i64),
                )) as ArrayRef,
                _ => Arc::new(TimestampNanosecondArray::from_iter_values(
                    (0..n).map(|i| 1_683_000_000_000_000_000 + 1_000 * i as i64),
                )),
            },
        ),
        (
            "has_label",
            DataType::Boolean,
            Arc::new(BooleanArray::from(vec![true; n])),
        ),
        ("image_0_uid", DataType::Utf8, s(&|i| format!("a{i}"))),
        (
            "image_0_url",
            DataType::Utf8,
            s(&|i| format!("https://example.invalid/a{i}.png")),
        ),
        ("image_1_uid", DataType::Utf8, s(&|i| format!("b{i}"))),
        (
            "image_1_url",
            DataType::Utf8,
            s(&|i| format!("https://example.invalid/b{i}.png")),
        ),
        (
            "jpg_0",
            DataType::Binary,
            Arc::new(BinaryArray::from_iter_values((0..n).map(|i| {
                if Some(i) == garbage {
                    b"\xff\xd8 not really a jpeg".to_vec()
                } else {
                    jpeg(i as u8)
                }
            }))),
        ),
        (
            "jpg_1",
            DataType::Binary,
            Arc::new(BinaryArray::from_iter_values(
                (0..n).map(|i| jpeg(i as u8 + 100)),
            )),
        ),
        (
            "label_0",
            DataType::Float64,
            Arc::new(Float64Array::from_iter_values(labels.iter().map(|l| l.0))),
        ),
        (
            "label_1",
            DataType::Float64,
            Arc::new(Float64Array::from_iter_values(labels.iter().map(|l| l.1))),
        ),
        (
            "model_0",
            DataType::Utf8,
            s(&|_| "stabilityai/stable-diffusion-2-1".into()),
        ),
        (
            "model_1",
            DataType::Utf8,
            s(&|_| "CompVis/stable-diffusion-v1-4".into()),
        ),
        (
            "ranking_id",
            DataType::Int64,
            Arc::new(Int64Array::from_iter_values(
                (0..n as i64).map(|i| 1000 + i),
            )),
        ),
        (
            "user_id",
            DataType::Int64,
            Arc::new(Int64Array::from_iter_values((0..n as i64).map(|i| i % 4))),
        ),
        (
            "num_example_per_prompt",
            DataType::Int64,
            Arc::new(Int64Array::from_iter_values((0..n).map(|_| 2))),
        ),
        (
            "__index_level_0__",
            DataType::Int64,
            Arc::new(Int64Array::from_iter_values((0..n as i64).map(|i| 70 + i))),
        ),
    ];
    let kept: Vec<_> = all
        .into_iter()
        .filter(|(name, _, _)| Some(*name) != drop)
        .collect();
    let schema = Arc::new(Schema::new(
        kept.iter()
            .map(|(n, t, _)| Field::new(*n, t.clone(), true))
            .collect::<Vec<_>>(),
    ));
    let batch = RecordBatch::try_new(
        schema.clone(),
        kept.into_iter().map(|(_, _, a)| a).collect(),
    )
    .unwrap();
    let mut w = ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

fn shards(paths: &[&Path]) -> Value {
    Value::List(
        paths
            .iter()
            .map(|p| Value::Str(p.display().to_string()))
            .collect(),
    )
}

#[test]
fn a_fixture_in_the_real_schema_is_ingested_row_for_row() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        dir.path().join("train-0.parquet"),
        dir.path().join("train-1.parquet"),
    );
    fixture(&a, 5, None, None);
    fixture(&b, 4, None, None);
    let (r, cx) = run(
        &PickAPic,
        &[("shards", shards(&[&a, &b]))],
        vec![],
        dir.path(),
    );
    r.unwrap();
    let out = cx.out_dir().join("pairs.parquet");
    assert_eq!(columns(&out), COLUMNS);
    assert_eq!(rows(&out), 9);
    let batches = read(&out);
    let first = &batches[0];
    assert_eq!(
        first
            .column_by_name("caption")
            .unwrap()
            .as_string::<i32>()
            .value(3),
        "a cat number 1"
    );
    assert_eq!(
        first
            .column_by_name("label_0")
            .unwrap()
            .as_primitive::<Float64Type>()
            .value(2),
        0.5
    );
    assert_eq!(
        first
            .column_by_name("jpg_1")
            .unwrap()
            .as_binary::<i32>()
            .value(0),
        jpeg(100).as_slice()
    );
    assert_eq!(
        first
            .column_by_name("__index_level_0__")
            .unwrap()
            .as_primitive::<arrow_array::types::Int64Type>()
            .value(0),
        70
    );
    let created = |b: &RecordBatch, i| {
        b.column_by_name("created_at")
            .unwrap()
            .as_primitive::<arrow_array::types::TimestampNanosecondType>()
            .value(i)
    };
    assert_eq!(created(first, 1), 1_683_000_000_000_001_000);

    // Microsecond timestamps (older pyarrow) are read as nanoseconds.
    let micro = tempfile::tempdir().unwrap();
    let shard = micro.path().join("us.parquet");
    fixture_with(&shard, 3, None, None, TimeUnit::Microsecond);
    let (r, cx) = run(
        &PickAPic,
        &[("shards", shards(&[&shard]))],
        vec![],
        micro.path(),
    );
    r.unwrap();
    assert_eq!(
        created(&read(&cx.out_dir().join("pairs.parquet"))[0], 1),
        1_683_000_000_000_001_000
    );

    // `limit` stops early; a directory means its shards in name order.
    let dir2 = tempfile::tempdir().unwrap();
    let (r, cx) = run(
        &PickAPic,
        &[("shards", shards(&[dir.path()])), ("limit", Value::Int(7))],
        vec![],
        dir2.path(),
    );
    r.unwrap();
    assert_eq!(rows(&cx.out_dir().join("pairs.parquet")), 7);
}

#[test]
fn shards_of_a_download_input_are_read_when_no_path_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let dl = dir.path().join("dl");
    std::fs::create_dir_all(&dl).unwrap();
    fixture(&dl.join("validation_unique.parquet"), 3, None, None);
    let inp = input(
        "pickapic-download",
        "download",
        &dl,
        &[("validation_unique.parquet", None)],
    );
    let (r, cx) = run(&PickAPic, &[], vec![inp], dir.path());
    r.unwrap();
    assert_eq!(rows(&cx.out_dir().join("pairs.parquet")), 3);
}

#[test]
fn a_shard_missing_a_column_is_refused_by_name_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (good, bad) = (
        dir.path().join("good.parquet"),
        dir.path().join("bad.parquet"),
    );
    fixture(&good, 3, None, None);
    fixture(&bad, 3, Some("label_1"), None);
    let (r, cx) = run(
        &PickAPic,
        &[("shards", shards(&[&good, &bad]))],
        vec![],
        dir.path(),
    );
    let msg = r.unwrap_err().to_string();
    assert!(
        msg.contains(&bad.display().to_string()) && msg.contains("missing column `label_1`"),
        "{msg}"
    );
    assert!(!cx.out_dir().join("pairs.parquet").exists());
}

#[test]
fn undecodable_image_bytes_are_refused_naming_shard_row_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let shard = dir.path().join("train-7.parquet");
    fixture(&shard, 4, None, Some(2));
    let (r, cx) = run(
        &PickAPic,
        &[("shards", shards(&[&shard]))],
        vec![],
        dir.path(),
    );
    let msg = r.unwrap_err().to_string();
    assert!(!cx.out_dir().join("pairs.parquet").exists());
    assert!(
        msg.contains(&shard.display().to_string())
            && msg.contains("row 2")
            && msg.contains("`jpg_0` is not a decodable image"),
        "{msg}"
    );
}

#[test]
fn a_truncated_shard_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let shard = dir.path().join("train-3.parquet");
    fixture(&shard, 4, None, None);
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() / 2]).unwrap();
    let (r, cx) = run(
        &PickAPic,
        &[("shards", shards(&[&shard]))],
        vec![],
        dir.path(),
    );
    let msg = r.unwrap_err().to_string();
    assert!(
        msg.contains(&shard.display().to_string()) && msg.contains("not a readable Parquet file"),
        "{msg}"
    );
    assert!(!cx.out_dir().join("pairs.parquet").exists());
    let (r, _) = run(
        &PickAPic,
        &[("shards", shards(&[&dir.path().join("absent.parquet")]))],
        vec![],
        dir.path(),
    );
    assert!(
        r.unwrap_err()
            .to_string()
            .contains("absent.parquet: no such file")
    );
}
