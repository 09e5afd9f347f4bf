//! The run index: one Parquet row per cell run, in `runs/index/<key>.<cell>[-s<seed>].parquet`.
//!
//! A cell whose key another cell already committed (identical inputs through early cutoff, say)
//! gets its own row pointing at that key, so tables find every cell by its id.
//! One small file per row keeps appends atomic and lock-free across processes; the directory
//! is a Parquet dataset that polars, pandas and DuckDB read as one table
//! (`SELECT * FROM 'runs/index/*.parquet'`). `tables` and `diff` read only this.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{Float64Builder, MapBuilder, StringBuilder};
use arrow_array::{
    Array, ArrayRef, Float64Array, MapArray, RecordBatch, StringArray, UInt32Array, UInt64Array,
};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::error::Error;
use crate::store::write_atomic;

/// One committed cell, as the index records it.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexRow {
    pub key: String,
    pub stage: String,
    pub kind: String,
    pub version: u32,
    pub cell: String,
    pub label: String,
    pub seed: Option<u64>,
    /// The sweep overrides of the cell's lineage, e.g. `spo.k=3` (empty for a base cell).
    pub variant: String,
    /// JSON object: stage → params, for the cell and every stage upstream of it.
    pub lineage: String,
    pub metrics: BTreeMap<String, f64>,
    /// Unix seconds at start.
    pub started: f64,
    pub seconds: f64,
    pub host: String,
    pub tool_version: String,
}

fn schema() -> Schema {
    let entries = Field::new(
        "entries",
        DataType::Struct(
            vec![
                Field::new("key", DataType::Utf8, false),
                Field::new("value", DataType::Float64, true),
            ]
            .into(),
        ),
        false,
    );
    Schema::new(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("stage", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("version", DataType::UInt32, false),
        Field::new("cell", DataType::Utf8, false),
        Field::new("label", DataType::Utf8, false),
        Field::new("seed", DataType::UInt64, true),
        Field::new("variant", DataType::Utf8, false),
        Field::new("lineage", DataType::Utf8, false),
        Field::new("metrics", DataType::Map(Arc::new(entries), false), false),
        Field::new("started", DataType::Float64, false),
        Field::new("seconds", DataType::Float64, false),
        Field::new("host", DataType::Utf8, false),
        Field::new("tool_version", DataType::Utf8, false),
    ])
}

/// The file holding the row of `cell` (with `seed`) for `key`.
pub fn row_path(dir: &Path, key: &str, cell: &str, seed: Option<u64>) -> std::path::PathBuf {
    let cell = &cell[..cell.len().min(16)];
    match seed {
        Some(s) => dir.join(format!("{key}.{cell}-s{s}.parquet")),
        None => dir.join(format!("{key}.{cell}.parquet")),
    }
}

/// Appends `row` to the index in `dir` (atomically, as its own file).
pub fn append(dir: &Path, row: &IndexRow) -> Result<(), Error> {
    let path = row_path(dir, &row.key, &row.cell, row.seed);
    let corrupt = |e: &dyn std::fmt::Display| Error::Corrupt {
        path: path.clone(),
        message: e.to_string(),
    };
    let s = |v: &str| Arc::new(StringArray::from(vec![v])) as ArrayRef;
    let mut metrics = MapBuilder::new(None, StringBuilder::new(), Float64Builder::new());
    for (k, v) in &row.metrics {
        metrics.keys().append_value(k);
        metrics.values().append_value(*v);
    }
    metrics.append(true).map_err(|e| corrupt(&e))?;
    let schema = Arc::new(schema());
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            s(&row.key),
            s(&row.stage),
            s(&row.kind),
            Arc::new(UInt32Array::from(vec![row.version])),
            s(&row.cell),
            s(&row.label),
            Arc::new(UInt64Array::from(vec![row.seed])),
            s(&row.variant),
            s(&row.lineage),
            Arc::new(metrics.finish()),
            Arc::new(Float64Array::from(vec![row.started])),
            Arc::new(Float64Array::from(vec![row.seconds])),
            s(&row.host),
            s(&row.tool_version),
        ],
    )
    .map_err(|e| corrupt(&e))?;
    let mut buf = Vec::new();
    let mut w = ArrowWriter::try_new(&mut buf, schema, None).map_err(|e| corrupt(&e))?;
    w.write(&batch).map_err(|e| corrupt(&e))?;
    w.close().map_err(|e| corrupt(&e))?;
    write_atomic(&path, &buf)
}

/// Reads the row file at `path`, for `verify`.
pub fn check_file(path: &Path) -> Result<(), Error> {
    read_file(path, &mut Vec::new())
}

/// Reads every row of the index in `dir`, oldest first. A file that cannot be read is skipped
/// with a warning that names it (`spo-pipe verify --repair` quarantines it).
pub fn read_all(dir: &Path) -> Result<Vec<IndexRow>, Error> {
    let mut rows = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(rows),
        Err(e) => return Err(Error::io(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) == Some("parquet") {
            let mut file_rows = Vec::new();
            match read_file(&path, &mut file_rows) {
                Ok(()) => rows.append(&mut file_rows),
                Err(e) => tracing::warn!(
                    "skipping an unreadable run-index file ({e}); `spo-pipe verify --repair` quarantines it"
                ),
            }
        }
    }
    rows.sort_by(|a, b| (a.started + a.seconds).total_cmp(&(b.started + b.seconds)));
    Ok(rows)
}

fn read_file(path: &Path, rows: &mut Vec<IndexRow>) -> Result<(), Error> {
    let corrupt = |m: String| Error::Corrupt {
        path: path.to_owned(),
        message: m,
    };
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|e| corrupt(e.to_string()))?;
    for batch in reader {
        let batch = batch.map_err(|e| corrupt(e.to_string()))?;
        let col = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| corrupt(format!("no column `{name}`")))
        };
        let strs = |name: &str| -> Result<StringArray, Error> {
            col(name)?
                .as_any()
                .downcast_ref::<StringArray>()
                .cloned()
                .ok_or_else(|| corrupt(format!("column `{name}` is not utf8")))
        };
        let f64s = |name: &str| -> Result<Float64Array, Error> {
            col(name)?
                .as_any()
                .downcast_ref::<Float64Array>()
                .cloned()
                .ok_or_else(|| corrupt(format!("column `{name}` is not float64")))
        };
        let (key, stage, kind, cell, label, variant, lineage, host, tv) = (
            strs("key")?,
            strs("stage")?,
            strs("kind")?,
            strs("cell")?,
            strs("label")?,
            strs("variant")?,
            strs("lineage")?,
            strs("host")?,
            strs("tool_version")?,
        );
        let version = col("version")?
            .as_any()
            .downcast_ref::<UInt32Array>()
            .cloned()
            .ok_or_else(|| corrupt("column `version` is not uint32".into()))?;
        let seed = col("seed")?
            .as_any()
            .downcast_ref::<UInt64Array>()
            .cloned()
            .ok_or_else(|| corrupt("column `seed` is not uint64".into()))?;
        let metrics = col("metrics")?
            .as_any()
            .downcast_ref::<MapArray>()
            .cloned()
            .ok_or_else(|| corrupt("column `metrics` is not a map".into()))?;
        let (started, seconds) = (f64s("started")?, f64s("seconds")?);
        for i in 0..batch.num_rows() {
            let entries = metrics.value(i);
            let mk = entries
                .column(0)
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| corrupt("metric names are not utf8".into()))?;
            let mv = entries
                .column(1)
                .as_any()
                .downcast_ref::<Float64Array>()
                .ok_or_else(|| corrupt("metric values are not float64".into()))?;
            let m = (0..mk.len())
                .map(|j| {
                    (
                        mk.value(j).to_owned(),
                        if mv.is_null(j) { f64::NAN } else { mv.value(j) },
                    )
                })
                .collect();
            rows.push(IndexRow {
                key: key.value(i).into(),
                stage: stage.value(i).into(),
                kind: kind.value(i).into(),
                version: version.value(i),
                cell: cell.value(i).into(),
                label: label.value(i).into(),
                seed: (!seed.is_null(i)).then(|| seed.value(i)),
                variant: variant.value(i).into(),
                lineage: lineage.value(i).into(),
                metrics: m,
                started: started.value(i),
                seconds: seconds.value(i),
                host: host.value(i).into(),
                tool_version: tv.value(i).into(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let row = IndexRow {
            key: "k1".into(),
            stage: "spo".into(),
            kind: "spo".into(),
            version: 3,
            cell: "c".into(),
            label: "spo[k=3]".into(),
            seed: Some(2),
            variant: "spo.k=3".into(),
            lineage: "{}".into(),
            metrics: [("a".to_string(), 1.5), ("b".to_string(), -2.0)].into(),
            started: 10.0,
            seconds: 1.0,
            host: "h".into(),
            tool_version: "0.1.0".into(),
        };
        append(dir.path(), &row).unwrap();
        let mut other = row.clone();
        other.key = "k2".into();
        other.seed = None;
        other.metrics.clear();
        other.started = 5.0;
        append(dir.path(), &other).unwrap();
        assert_eq!(read_all(dir.path()).unwrap(), vec![other, row]);
    }
}
