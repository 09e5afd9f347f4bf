//! A Parquet file read into plain columns, for the few shapes the report draws.

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int32Type, Int64Type, UInt32Type, UInt64Type};
use arrow_array::{Array, ArrayRef};
use arrow_schema::DataType;
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// One column's values (nulls as `None`).
#[derive(Debug, Clone)]
pub enum Column {
    Number(Vec<Option<f64>>),
    Bool(Vec<Option<bool>>),
    Text(Vec<Option<String>>),
    Bytes(Vec<Option<Vec<u8>>>),
    /// A type the report does not draw.
    Other,
}

/// Columns by name, in the file's order.
#[derive(Debug, Clone, Default)]
pub struct Columns {
    pub names: Vec<String>,
    pub columns: Vec<Column>,
    pub rows: usize,
}

impl Columns {
    pub fn get(&self, name: &str) -> Option<&Column> {
        self.names
            .iter()
            .position(|n| n == name)
            .map(|i| &self.columns[i])
    }

    /// A numeric column's value at `row`.
    pub fn number(&self, name: &str, row: usize) -> Option<f64> {
        match self.get(name)? {
            Column::Number(v) => v.get(row).copied().flatten(),
            Column::Bool(v) => v.get(row).copied().flatten().map(f64::from),
            _ => None,
        }
    }

    pub fn text(&self, name: &str, row: usize) -> Option<&str> {
        match self.get(name)? {
            Column::Text(v) => v.get(row).and_then(|s| s.as_deref()),
            _ => None,
        }
    }
}

/// Reads at most `limit` rows of a Parquet file's `bytes`; `skip_bytes` leaves binary columns
/// out (cheap reads of tables that also hold images).
pub fn read(bytes: Bytes, limit: usize, skip_bytes: bool) -> Result<Columns, String> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| e.to_string())?;
    let schema = builder.schema().clone();
    let keep: Vec<usize> = (0..schema.fields().len())
        .filter(|&i| !(skip_bytes && is_bytes(schema.field(i).data_type())))
        .collect();
    let mask = parquet::arrow::ProjectionMask::roots(builder.parquet_schema(), keep.clone());
    let reader = builder
        .with_projection(mask)
        .with_limit(limit)
        .build()
        .map_err(|e| e.to_string())?;
    let mut out = Columns {
        names: keep
            .iter()
            .map(|&i| schema.field(i).name().clone())
            .collect(),
        columns: keep
            .iter()
            .map(|&i| empty(schema.field(i).data_type()))
            .collect(),
        rows: 0,
    };
    for batch in reader {
        let batch = batch.map_err(|e| format!("corrupt row group: {e}"))?;
        for (c, a) in out.columns.iter_mut().zip(batch.columns()) {
            extend(c, a);
        }
        out.rows += batch.num_rows();
    }
    Ok(out)
}

fn is_bytes(t: &DataType) -> bool {
    matches!(t, DataType::Binary | DataType::LargeBinary)
}

fn empty(t: &DataType) -> Column {
    match t {
        DataType::Float64
        | DataType::Float32
        | DataType::Int64
        | DataType::Int32
        | DataType::UInt64
        | DataType::UInt32 => Column::Number(Vec::new()),
        DataType::Boolean => Column::Bool(Vec::new()),
        DataType::Utf8 | DataType::LargeUtf8 => Column::Text(Vec::new()),
        DataType::Binary | DataType::LargeBinary => Column::Bytes(Vec::new()),
        _ => Column::Other,
    }
}

fn extend(c: &mut Column, a: &ArrayRef) {
    let n = a.len();
    let present = |i: usize| !a.is_null(i);
    match c {
        Column::Number(v) => {
            let get: Box<dyn Fn(usize) -> f64> = match a.data_type() {
                DataType::Float64 => Box::new(|i| a.as_primitive::<Float64Type>().value(i)),
                DataType::Float32 => {
                    Box::new(|i| f64::from(a.as_primitive::<Float32Type>().value(i)))
                }
                DataType::Int64 => Box::new(|i| a.as_primitive::<Int64Type>().value(i) as f64),
                DataType::Int32 => Box::new(|i| f64::from(a.as_primitive::<Int32Type>().value(i))),
                DataType::UInt64 => Box::new(|i| a.as_primitive::<UInt64Type>().value(i) as f64),
                _ => Box::new(|i| f64::from(a.as_primitive::<UInt32Type>().value(i))),
            };
            v.extend((0..n).map(|i| present(i).then(|| get(i))));
        }
        Column::Bool(v) => {
            let b = a.as_boolean();
            v.extend((0..n).map(|i| present(i).then(|| b.value(i))));
        }
        Column::Text(v) => match a.data_type() {
            DataType::LargeUtf8 => {
                let s = a.as_string::<i64>();
                v.extend((0..n).map(|i| present(i).then(|| s.value(i).to_owned())));
            }
            _ => {
                let s = a.as_string::<i32>();
                v.extend((0..n).map(|i| present(i).then(|| s.value(i).to_owned())));
            }
        },
        Column::Bytes(v) => match a.data_type() {
            DataType::LargeBinary => {
                let b = a.as_binary::<i64>();
                v.extend((0..n).map(|i| present(i).then(|| b.value(i).to_vec())));
            }
            _ => {
                let b = a.as_binary::<i32>();
                v.extend((0..n).map(|i| present(i).then(|| b.value(i).to_vec())));
            }
        },
        Column::Other => {}
    }
}

/// The image format of `bytes`, as a file extension, from its magic number.
pub fn image_ext(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("png")
    } else if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        Some("jpg")
    } else if bytes.len() > 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("webp")
    } else {
        None
    }
}
