//! Helpers shared by the data-stage tests: running a kind detached on a temp dir, handing it
//! a hand-built input, and reading Parquet back.

#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sha2::{Digest, Sha256};
use spo_core::{FileEntry, Input, Manifest, Params, StageContext, StageError, StageKind, Value};

/// The resolved params of `kind` with `set` overriding defaults.
pub fn params(kind: &dyn StageKind, set: &[(&str, Value)]) -> Params {
    Params::resolve(&kind.params(), set).unwrap_or_else(|e| panic!("{}: {e}", kind.name()))
}

/// Runs `kind` detached, writing into `dir/out`; returns the result and the context.
pub fn run(
    kind: &dyn StageKind,
    set: &[(&str, Value)],
    inputs: Vec<Input>,
    dir: &Path,
) -> (Result<(), StageError>, StageContext) {
    let mut cx = StageContext::detached(
        "test",
        params(kind, set),
        None,
        inputs,
        dir.join("out"),
        dir.join("scratch"),
    );
    std::fs::create_dir_all(cx.out_dir()).unwrap();
    std::fs::create_dir_all(cx.scratch_dir()).unwrap();
    let r = kind.run(&mut cx);
    (r, cx)
}

/// An input from stage `stage` of kind `kind` whose directory holds `files` (sha256 computed
/// from the bytes unless `digest` overrides one).
pub fn input(stage: &str, kind: &str, dir: &Path, files: &[(&str, Option<&str>)]) -> Input {
    let files = files
        .iter()
        .map(|(path, digest)| {
            let bytes = std::fs::read(dir.join(path)).unwrap();
            FileEntry {
                path: (*path).to_owned(),
                sha256: digest.map_or_else(|| hex::encode(Sha256::digest(&bytes)), str::to_owned),
                bytes: bytes.len() as u64,
                info: None,
            }
        })
        .collect();
    let manifest = Manifest {
        key: "k".into(),
        stage: stage.into(),
        kind: kind.into(),
        version: 1,
        cell: stage.into(),
        label: stage.into(),
        seed: None,
        params: Params::default(),
        inputs: vec![],
        files,
        digest: "d".into(),
        metrics: Default::default(),
        started: 0.0,
        seconds: 0.0,
        tool_version: "test".into(),
        host: "test".into(),
    };
    Input {
        stage: stage.into(),
        kind: kind.into(),
        dir: dir.to_owned(),
        manifest,
    }
}

/// All record batches of a Parquet file.
pub fn read(path: &Path) -> Vec<RecordBatch> {
    let b = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap()).unwrap();
    b.build().unwrap().map(|b| b.unwrap()).collect()
}

/// Column names of a Parquet file.
pub fn columns(path: &Path) -> Vec<String> {
    let b = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap()).unwrap();
    b.schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect()
}

/// Total rows of a Parquet file.
pub fn rows(path: &Path) -> usize {
    read(path).iter().map(|b| b.num_rows()).sum()
}

/// /work/shared/data as seen from the repo root (`../shared/data`), if present.
pub fn shared_data() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data");
    if p.is_dir() {
        Some(p)
    } else {
        println!(
            "SKIPPED: {} is absent (the shared third-party data); this test needs it",
            p.display()
        );
        None
    }
}
