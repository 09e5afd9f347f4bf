//! The manifest committed beside every cell's files: what made it, and what it holds.

use std::collections::BTreeMap;
use std::path::Path;

use crate::param::Params;

/// File name of the manifest inside `runs/store/<key>/`.
pub const MANIFEST: &str = "manifest.json";

/// An upstream cell this cell was computed from.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct InputRef {
    /// The upstream stage's name.
    pub stage: String,
    /// The upstream cell's key.
    pub key: String,
    /// The upstream cell's content digest (what the key of this cell depends on).
    pub digest: String,
}

/// What a committed file holds, read from its own header at commit time.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "format", rename_all = "lowercase")]
pub enum FileInfo {
    /// A Parquet table: row count and `name: type` columns.
    Parquet { rows: u64, columns: Vec<String> },
    /// A safetensors file: `name: dtype[shape]` per tensor.
    Safetensors { tensors: Vec<String> },
    /// A PNG image.
    Png { width: u32, height: u32 },
}

/// One committed file.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<FileInfo>,
}

/// The record of one committed cell.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub key: String,
    pub stage: String,
    pub kind: String,
    pub version: u32,
    /// The cell id: the cell's identity in the pipeline, independent of content (seed excluded).
    pub cell: String,
    /// Human-readable name of the cell, e.g. `spo[k=3]`.
    pub label: String,
    pub seed: Option<u64>,
    pub params: Params,
    pub inputs: Vec<InputRef>,
    pub files: Vec<FileEntry>,
    /// SHA-256 over the sorted (path, file digest) pairs: downstream keys depend on this.
    pub digest: String,
    pub metrics: BTreeMap<String, f64>,
    /// Unix seconds at start.
    pub started: f64,
    pub seconds: f64,
    pub tool_version: String,
    pub host: String,
}

impl Manifest {
    /// Reads `dir/manifest.json`.
    pub fn read(dir: &Path) -> Result<Manifest, crate::Error> {
        let path = dir.join(MANIFEST);
        let bytes = std::fs::read(&path).map_err(|e| crate::Error::io(&path, e))?;
        serde_json::from_slice(&bytes).map_err(|e| crate::Error::Corrupt {
            path,
            message: e.to_string(),
        })
    }
}
