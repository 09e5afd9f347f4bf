//! What a committed file holds, read from its header only (never the whole file).

use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::manifest::FileInfo;

/// Describes `path` by its extension; `None` for formats we do not inspect or cannot read.
pub fn inspect(path: &Path) -> Option<FileInfo> {
    match path.extension()?.to_str()? {
        "parquet" => parquet(path),
        "safetensors" => safetensors(path),
        "png" => png(path),
        _ => None,
    }
}

fn parquet(path: &Path) -> Option<FileInfo> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let reader = SerializedFileReader::new(File::open(path).ok()?).ok()?;
    let meta = reader.metadata().file_metadata();
    let schema =
        parquet::arrow::parquet_to_arrow_schema(meta.schema_descr(), meta.key_value_metadata())
            .ok()?;
    let columns = schema
        .fields()
        .iter()
        .map(|f| format!("{}: {}", f.name(), f.data_type()))
        .collect();
    Some(FileInfo::Parquet {
        rows: u64::try_from(meta.num_rows()).ok()?,
        columns,
    })
}

fn safetensors(path: &Path) -> Option<FileInfo> {
    let mut f = File::open(path).ok()?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).ok()?;
    let n = u64::from_le_bytes(len);
    if n > 100 << 20 {
        return None;
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).ok()?;
    let v: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header).ok()?;
    let tensors = v
        .iter()
        .filter(|(k, _)| k.as_str() != "__metadata__")
        .map(|(k, t)| {
            let dtype = t.get("dtype").and_then(|d| d.as_str()).unwrap_or("?");
            let shape = t
                .get("shape")
                .and_then(|s| s.as_array())
                .map(|s| {
                    s.iter()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            format!("{k}: {dtype}[{shape}]")
        })
        .collect();
    Some(FileInfo::Safetensors { tensors })
}

fn png(path: &Path) -> Option<FileInfo> {
    let mut head = [0u8; 24];
    File::open(path).ok()?.read_exact(&mut head).ok()?;
    if &head[..8] != b"\x89PNG\r\n\x1a\n" || &head[12..16] != b"IHDR" {
        return None;
    }
    let width = u32::from_be_bytes(head[16..20].try_into().ok()?);
    let height = u32::from_be_bytes(head[20..24].try_into().ok()?);
    Some(FileInfo::Png { width, height })
}
