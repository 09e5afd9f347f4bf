//! Parquet plumbing shared by the data stages (`world`, `pickapic`, `prompts`): a table writer
//! that streams record batches into a hashing artifact writer, and typed cell readers that
//! accept every Arrow flavour of a column (Utf8 / LargeUtf8 / Utf8View, and so on), since
//! real shards come from pandas, `datasets` and polars alike.

use std::sync::Arc;

use crate::error::Result;
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use spo_core::{ArtifactWriter, StageContext, StageError};

/// A Parquet table being written as one artifact of a stage.
pub(crate) struct TableWriter<'a> {
    rel: String,
    schema: SchemaRef,
    writer: ArrowWriter<ArtifactWriter<'a>>,
}

impl<'a> TableWriter<'a> {
    /// Starts artifact `rel` with `schema` (Snappy-compressed).
    pub(crate) fn create(cx: &'a mut StageContext, rel: &str, schema: SchemaRef) -> Result<Self> {
        let sink = cx.create(rel)?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        let writer =
            ArrowWriter::try_new(sink, schema.clone(), Some(props)).map_err(|e| failed(rel, e))?;
        Ok(TableWriter {
            rel: rel.to_owned(),
            schema,
            writer,
        })
    }

    /// Appends a batch of rows.
    pub(crate) fn write(&mut self, columns: Vec<ArrayRef>) -> Result<()> {
        let batch =
            RecordBatch::try_new(self.schema.clone(), columns).map_err(|e| failed(&self.rel, e))?;
        Ok(self
            .writer
            .write(&batch)
            .map_err(|e| failed(&self.rel, e))?)
    }

    /// Writes the footer and records the artifact's digest.
    pub(crate) fn finish(self) -> Result<()> {
        let sink = self.writer.into_inner().map_err(|e| failed(&self.rel, e))?;
        Ok(sink.finish()?)
    }
}

/// Writes a whole table at once.
pub(crate) fn write_table(
    cx: &mut StageContext,
    rel: &str,
    schema: SchemaRef,
    columns: Vec<ArrayRef>,
) -> Result<()> {
    let mut w = TableWriter::create(cx, rel, schema)?;
    w.write(columns)?;
    w.finish()
}

fn failed(rel: &str, e: impl std::fmt::Display) -> StageError {
    StageError::Failed(format!("writing {rel}: {e}"))
}

/// A string cell of any string type; `None` for null or a non-string column.
pub(crate) fn str_at(col: &dyn Array, i: usize) -> Option<&str> {
    if col.is_null(i) {
        return None;
    }
    match col.data_type() {
        DataType::Utf8 => Some(col.as_string::<i32>().value(i)),
        DataType::LargeUtf8 => Some(col.as_string::<i64>().value(i)),
        DataType::Utf8View => Some(col.as_string_view().value(i)),
        _ => None,
    }
}

/// A binary cell of any binary type; `None` for null or a non-binary column.
pub(crate) fn bytes_at(col: &dyn Array, i: usize) -> Option<&[u8]> {
    if col.is_null(i) {
        return None;
    }
    match col.data_type() {
        DataType::Binary => Some(col.as_binary::<i32>().value(i)),
        DataType::LargeBinary => Some(col.as_binary::<i64>().value(i)),
        DataType::BinaryView => Some(col.as_binary_view().value(i)),
        _ => None,
    }
}

/// A float cell (float64); `None` for null or another type.
pub(crate) fn f64_at(col: &dyn Array, i: usize) -> Option<f64> {
    (!col.is_null(i))
        .then(|| col.as_primitive_opt::<Float64Type>().map(|a| a.value(i)))
        .flatten()
}

/// An integer cell (int64); `None` for null or another type.
pub(crate) fn i64_at(col: &dyn Array, i: usize) -> Option<i64> {
    (!col.is_null(i))
        .then(|| col.as_primitive_opt::<Int64Type>().map(|a| a.value(i)))
        .flatten()
}

/// A boolean cell; `None` for null or another type.
pub(crate) fn bool_at(col: &dyn Array, i: usize) -> Option<bool> {
    (!col.is_null(i))
        .then(|| col.as_boolean_opt().map(|a| a.value(i)))
        .flatten()
}

/// Shorthand for building a column.
pub(crate) fn col<A: Array + 'static>(a: A) -> ArrayRef {
    Arc::new(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{
        BinaryViewArray, Int32Array, LargeBinaryArray, LargeStringArray, StringViewArray,
    };

    #[test]
    fn cells_read_from_every_flavour_of_a_column_and_null_is_none() {
        let strings: [ArrayRef; 3] = [
            col(arrow_array::StringArray::from(vec![Some("a"), None])),
            col(LargeStringArray::from(vec![Some("a"), None])),
            col(StringViewArray::from(vec![Some("a"), None])),
        ];
        for a in &strings {
            assert_eq!(
                (str_at(a.as_ref(), 0), str_at(a.as_ref(), 1)),
                (Some("a"), None),
                "{}",
                a.data_type()
            );
        }
        let bytes: [ArrayRef; 3] = [
            col(arrow_array::BinaryArray::from(vec![Some(&b"x"[..]), None])),
            col(LargeBinaryArray::from(vec![Some(&b"x"[..]), None])),
            col(BinaryViewArray::from(vec![Some(&b"x"[..]), None])),
        ];
        for a in &bytes {
            assert_eq!(
                (bytes_at(a.as_ref(), 0), bytes_at(a.as_ref(), 1)),
                (Some(&b"x"[..]), None),
                "{}",
                a.data_type()
            );
        }
        // The wrong type reads as None rather than panicking.
        let ints = col(Int32Array::from(vec![1]));
        assert_eq!(
            (
                str_at(ints.as_ref(), 0),
                bytes_at(ints.as_ref(), 0),
                f64_at(ints.as_ref(), 0),
                i64_at(ints.as_ref(), 0),
                bool_at(ints.as_ref(), 0)
            ),
            (None, None, None, None, None)
        );
    }
}
