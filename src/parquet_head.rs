//! The first rows of a Parquet file as text, for `show --head`.

use std::fmt::Write;
use std::fs::File;
use std::path::Path;

use anyhow::Context;
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int32Type, Int64Type, UInt32Type, UInt64Type};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// Up to `n` rows of `path`, one `column = value` block per row; long values are cut.
pub fn head(path: &Path, n: usize) -> anyhow::Result<String> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.with_batch_size(n.max(1)).build())
        .with_context(|| format!("{}: not a readable Parquet file", path.display()))?;
    let mut out = String::new();
    let mut shown = 0;
    for batch in reader {
        let batch: RecordBatch =
            batch.with_context(|| format!("{}: corrupt row group", path.display()))?;
        for row in 0..batch.num_rows() {
            if shown == n {
                return Ok(out);
            }
            let _ = writeln!(out, "  [{shown}]");
            for (f, col) in batch.schema().fields().iter().zip(batch.columns()) {
                let _ = writeln!(out, "    {} = {}", f.name(), cell(col.as_ref(), row));
            }
            shown += 1;
        }
    }
    Ok(out)
}

fn cell(a: &dyn Array, i: usize) -> String {
    if a.is_null(i) {
        return "null".into();
    }
    let cut = |s: &str| {
        if s.chars().count() > 80 {
            format!("{}…", s.chars().take(80).collect::<String>())
        } else {
            s.to_owned()
        }
    };
    match a.data_type() {
        DataType::Utf8 => cut(a.as_string::<i32>().value(i)),
        DataType::LargeUtf8 => cut(a.as_string::<i64>().value(i)),
        DataType::Binary => binary(a.as_binary::<i32>().value(i)),
        DataType::LargeBinary => binary(a.as_binary::<i64>().value(i)),
        DataType::Boolean => a.as_boolean().value(i).to_string(),
        DataType::Int32 => a.as_primitive::<Int32Type>().value(i).to_string(),
        DataType::Int64 => a.as_primitive::<Int64Type>().value(i).to_string(),
        DataType::UInt32 => a.as_primitive::<UInt32Type>().value(i).to_string(),
        DataType::UInt64 => a.as_primitive::<UInt64Type>().value(i).to_string(),
        DataType::Float32 => a.as_primitive::<Float32Type>().value(i).to_string(),
        DataType::Float64 => a.as_primitive::<Float64Type>().value(i).to_string(),
        DataType::List(_) => format!("[{} items]", a.as_list::<i32>().value(i).len()),
        other => format!("<{other}>"),
    }
}

fn binary(b: &[u8]) -> String {
    let kind = if b.starts_with(b"\x89PNG") {
        "PNG"
    } else if b.starts_with(&[0xff, 0xd8]) {
        "JPEG"
    } else {
        "bytes"
    };
    format!("<{kind}, {} bytes>", b.len())
}
