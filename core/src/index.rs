//! The run index: one Parquet row per cell run, under `runs/index/`.
//!
//! A cell whose key another cell already committed (identical inputs through early cutoff, say)
//! gets its own row pointing at that key, so tables find every cell by its id. A row's id is
//! (key, cell, seed).
//!
//! Each run appends a row as its own small file, `<key>.<cell>[-s<seed>].parquet`, which keeps
//! appends atomic and lock-free across processes. Once a run ends with more than
//! [`MERGE_AT`] small files, and at every `gc`, they are merged ([`compact`]) into one file
//! `merged-<nanos>-<pid>.parquet`, sorted by completion time: written to a temporary name,
//! fsynced, renamed into place, then only the files it read are removed. A kill at any point
//! leaves either the old files, or the merged file beside some of them; readers drop duplicate
//! row ids (keeping the latest), so both states read the same. The directory stays a Parquet
//! dataset that polars, pandas and DuckDB read as one table
//! (`SELECT * FROM 'runs/index/*.parquet'`; right after a merge is interrupted such a reader
//! may see a row twice). `tables` and `diff` read only this (`tables` only the columns it needs,
//! by name: [`read_metrics`]); `verify --repair` takes a damaged cell's rows out of merged files
//! ([`take_merged_rows`]).

use std::collections::{BTreeSet, HashSet};
use std::fs::{self, File};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arrow_array::builder::{Float64Builder, MapBuilder, StringBuilder};
use arrow_array::{
    Array, ArrayRef, Float64Array, MapArray, RecordBatch, StringArray, UInt32Array, UInt64Array,
};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::{ArrowWriter, ProjectionMask};

use crate::cache::{KeyHasher, raw_key};
use crate::error::Error;
use crate::namemap::NameMap;
use crate::store::{sync_dir, write_atomic};

/// Small row files past which a run merges the index when it ends.
pub const MERGE_AT: usize = 256;

/// The name prefix of merged files.
const MERGED: &str = "merged-";

/// A row's identity: (key, cell id, seed).
pub type RowId = (String, String, Option<u64>);

/// A set of row ids. Where the key and cell id are hex SHA-256 digests (as every id spo-pipe
/// writes is), an id is held as the leading 64 bits of each digest and the seed: 24 bytes, not
/// the 72 of both digests, for a set a no-op run holds for every row of the index. Two ids are
/// confused only if both their keys and their cells share 64 leading bits, about 2^-128 for a
/// pair of distinct ids (2^-94 over all pairs of 200,000 rows); other ids are held as strings.
#[derive(Debug, Default)]
pub struct RowIds {
    raw: HashSet<RawId, BuildHasherDefault<KeyHasher>>,
    other: HashSet<RowId>,
}

/// A row id whose key and cell id are hex SHA-256 digests: their leading 64 bits, and the seed.
#[derive(Debug, PartialEq, Eq)]
struct RawId {
    key: u64,
    cell: u64,
    /// `u64::MAX` for no seed; a seed of `u64::MAX` is held in `other`.
    seed: u64,
}

impl RawId {
    fn new(key: &[u8; 32], cell: &[u8; 32], seed: Option<u64>) -> Option<RawId> {
        let word = |d: &[u8; 32]| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&d[..8]);
            u64::from_le_bytes(w)
        };
        let seed = match seed {
            None => u64::MAX,
            Some(u64::MAX) => return None,
            Some(s) => s,
        };
        Some(RawId {
            key: word(key),
            cell: word(cell),
            seed,
        })
    }
}

impl Hash for RawId {
    /// The digests are uniformly random, so their leading bits hash an id well enough (a
    /// general-purpose hash of all 72 bytes was a tenth of a no-op run at 200k cells).
    fn hash<H: Hasher>(&self, h: &mut H) {
        let seed = self
            .seed
            .wrapping_add(1)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h.write_u64(self.key ^ self.cell.rotate_left(32) ^ seed);
    }
}

impl RowIds {
    /// Adds an id; false if it was already in the set.
    pub fn insert(&mut self, key: &str, cell: &str, seed: Option<u64>) -> bool {
        match (raw_key(key), raw_key(cell)) {
            (Some(k), Some(c)) if let Some(id) = RawId::new(&k, &c, seed) => self.raw.insert(id),
            _ => self.other.insert((key.to_owned(), cell.to_owned(), seed)),
        }
    }

    pub fn len(&self) -> usize {
        self.raw.len() + self.other.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

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
    /// Metric name → value (a `NameMap`: a table reads 200,000 rows of one or two metrics).
    pub metrics: NameMap<f64>,
    /// Unix seconds at start.
    pub started: f64,
    pub seconds: f64,
    pub host: String,
    pub tool_version: String,
}

/// What a table reads of an index row: its id and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct RunMetrics {
    pub key: String,
    pub cell: String,
    pub seed: Option<u64>,
    pub metrics: NameMap<f64>,
}

impl From<&IndexRow> for RunMetrics {
    fn from(r: &IndexRow) -> Self {
        RunMetrics {
            key: r.key.clone(),
            cell: r.cell.clone(),
            seed: r.seed,
            metrics: r.metrics.clone(),
        }
    }
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
    let buf = encode(std::slice::from_ref(row)).map_err(|m| Error::corrupt(&path, m))?;
    write_atomic(&path, &buf)
}

/// `rows` as one Parquet file.
fn encode(rows: &[IndexRow]) -> Result<Vec<u8>, String> {
    let s = |f: fn(&IndexRow) -> &str| {
        Arc::new(StringArray::from_iter_values(rows.iter().map(f))) as ArrayRef
    };
    let f64s = |f: fn(&IndexRow) -> f64| {
        Arc::new(Float64Array::from_iter_values(rows.iter().map(f))) as ArrayRef
    };
    let mut metrics = MapBuilder::new(None, StringBuilder::new(), Float64Builder::new());
    for row in rows {
        for (k, v) in &row.metrics {
            metrics.keys().append_value(k);
            metrics.values().append_value(*v);
        }
        metrics.append(true).map_err(|e| e.to_string())?;
    }
    let schema = Arc::new(schema());
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            s(|r| &r.key),
            s(|r| &r.stage),
            s(|r| &r.kind),
            Arc::new(UInt32Array::from_iter_values(
                rows.iter().map(|r| r.version),
            )),
            s(|r| &r.cell),
            s(|r| &r.label),
            Arc::new(UInt64Array::from_iter(rows.iter().map(|r| r.seed))),
            s(|r| &r.variant),
            s(|r| &r.lineage),
            Arc::new(metrics.finish()),
            f64s(|r| r.started),
            f64s(|r| r.seconds),
            s(|r| &r.host),
            s(|r| &r.tool_version),
        ],
    )
    .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut w = ArrowWriter::try_new(&mut buf, schema, None).map_err(|e| e.to_string())?;
    w.write(&batch).map_err(|e| e.to_string())?;
    w.close().map_err(|e| e.to_string())?;
    Ok(buf)
}

/// The index's Parquet files in `dir` (none if it does not exist).
fn files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.extension().and_then(|e| e.to_str()) == Some("parquet") {
            out.push(path);
        }
    }
    Ok(out)
}

fn is_merged(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(MERGED))
}

fn warn_unreadable(e: &Error) {
    tracing::warn!(
        "skipping an unreadable run-index file ({e}); `spo-pipe verify --repair` quarantines it"
    );
}

/// Sorts `rows` by completion time (`done`) and keeps the latest row of each id.
fn latest_only<T>(
    mut rows: Vec<T>,
    done: impl Fn(&T) -> f64,
    id: impl Fn(&T) -> (&str, &str, Option<u64>),
) -> Vec<T> {
    rows.sort_by(|a, b| done(a).total_cmp(&done(b)));
    let keep: Vec<bool> = {
        let mut seen = HashSet::with_capacity(rows.len());
        let mut keep: Vec<bool> = rows.iter().rev().map(|r| seen.insert(id(r))).collect();
        keep.reverse();
        keep
    };
    let mut keep = keep.into_iter();
    rows.retain(|_| keep.next().unwrap_or(true));
    rows
}

fn latest_rows(rows: Vec<IndexRow>) -> Vec<IndexRow> {
    latest_only(
        rows,
        |r| r.started + r.seconds,
        |r| (r.key.as_str(), r.cell.as_str(), r.seed),
    )
}

/// Reads the row file at `path`, for `verify`.
pub fn check_file(path: &Path) -> Result<(), Error> {
    read_file(path, &mut Vec::new())
}

/// Reads every row of the index in `dir`, oldest first, one per row id. A file that cannot
/// be read is skipped with a warning that names it (`spo-pipe verify --repair` quarantines it).
pub fn read_all(dir: &Path) -> Result<Vec<IndexRow>, Error> {
    read_each(dir, read_file).map(latest_rows)
}

/// The id and metrics of every row of the index in `dir`, as [`read_all`] gives them (oldest
/// first, one per row id, unreadable files skipped with a warning), reading only the columns
/// they and the completion time are in: a table at 200,000 cells needs none of the others.
pub fn read_metrics(dir: &Path) -> Result<Vec<RunMetrics>, Error> {
    let rows = read_each(dir, read_metrics_file)?;
    let rows = latest_only(
        rows,
        |(done, _)| *done,
        |(_, r)| (r.key.as_str(), r.cell.as_str(), r.seed),
    );
    Ok(rows.into_iter().map(|(_, r)| r).collect())
}

/// The id of every row in the index in `dir` (reading only the id columns); unreadable files
/// are skipped with a warning, as by [`read_all`].
pub fn row_ids(dir: &Path) -> Result<RowIds, Error> {
    // One set per file, each filled a record batch at a time (the id columns of 200,000 rows
    // are three times the set), then merged into the largest.
    let mut sets = read_each(dir, read_ids)?;
    sets.sort_by_key(RowIds::len);
    let mut ids = sets.pop().unwrap_or_default();
    for s in sets {
        ids.raw.extend(s.raw);
        ids.other.extend(s.other);
    }
    Ok(ids)
}

/// What `read` makes of every file of the index in `dir`. An unreadable file is skipped with a
/// warning; if a file vanished meanwhile (a merge replaced it), reading starts over.
fn read_each<T>(
    dir: &Path,
    read: impl Fn(&Path, &mut Vec<T>) -> Result<(), Error>,
) -> Result<Vec<T>, Error> {
    const TRIES: usize = 8;
    let mut attempt = 1;
    loop {
        let mut out = Vec::new();
        let mut vanished = false;
        for path in files(dir)? {
            let mut part = Vec::new();
            match read(&path, &mut part) {
                Ok(()) => out.append(&mut part),
                Err(Error::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound && attempt < TRIES =>
                {
                    vanished = true;
                    break;
                }
                Err(e) => warn_unreadable(&e),
            }
        }
        if !vanished {
            return Ok(out);
        }
        attempt += 1;
    }
}

fn read_ids(path: &Path, sets: &mut Vec<RowIds>) -> Result<(), Error> {
    let mut ids = RowIds::default();
    let corrupt = |m: &dyn std::fmt::Display| Error::corrupt(path, m);
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let b = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| corrupt(&e))?;
    // Sized once, not doubled (and rehashed) as it fills.
    let rows = usize::try_from(b.metadata().file_metadata().num_rows()).unwrap_or(0);
    ids.raw.reserve(rows);
    let mask = ProjectionMask::columns(b.parquet_schema(), ["key", "cell", "seed"]);
    for batch in b.with_projection(mask).build().map_err(|e| corrupt(&e))? {
        let batch = batch.map_err(|e| corrupt(&e))?;
        let key: StringArray = column(&batch, path, "key", "utf8")?;
        let cell: StringArray = column(&batch, path, "cell", "utf8")?;
        let seed: UInt64Array = column(&batch, path, "seed", "uint64")?;
        for i in 0..batch.num_rows() {
            ids.insert(key.value(i), cell.value(i), seed_at(&seed, i));
        }
    }
    sets.push(ids);
    Ok(())
}

/// Merges the index in `dir` when a run ends with more than [`MERGE_AT`] small files.
pub fn compact_if_due(dir: &Path) -> Result<usize, Error> {
    if files(dir)?.iter().filter(|p| !is_merged(p)).count() > MERGE_AT {
        compact(dir)
    } else {
        Ok(0)
    }
}

/// Merges every readable file of the index in `dir` into one sorted file (see the module doc
/// for why this is safe under concurrent runs and kills); returns how many files it replaced.
/// Unreadable files are left in place, with a warning. Another process merging already: 0.
pub fn compact(dir: &Path) -> Result<usize, Error> {
    let Some(_lock) = merge_lock(dir, false)? else {
        return Ok(0);
    };
    let mut merged = Vec::new();
    let mut rows = Vec::new();
    for path in files(dir)? {
        let mut file_rows = Vec::new();
        match read_file(&path, &mut file_rows) {
            Ok(()) => {
                rows.append(&mut file_rows);
                merged.push(path);
            }
            Err(e) => warn_unreadable(&e),
        }
    }
    if merged.len() < 2 {
        return Ok(0);
    }
    replace(dir, &latest_rows(rows), &merged)?;
    Ok(merged.len())
}

/// Takes the rows of `keys` out of the index's merged files in `dir` (rewriting each merged
/// file that holds some, as [`compact`] does) and returns them, for `verify --repair`. Small
/// row files are named by key; the caller moves those.
pub fn take_merged_rows(dir: &Path, keys: &BTreeSet<&str>) -> Result<Vec<IndexRow>, Error> {
    if keys.is_empty() {
        return Ok(vec![]);
    }
    let _lock = merge_lock(dir, true)?;
    let mut taken = Vec::new();
    for path in files(dir)?.into_iter().filter(|p| is_merged(p)) {
        let mut rows = Vec::new();
        // An unreadable file is damage of its own, which `verify` reports.
        if read_file(&path, &mut rows).is_err() {
            continue;
        }
        let (gone, kept): (Vec<_>, Vec<_>) = rows
            .into_iter()
            .partition(|r| keys.contains(r.key.as_str()));
        if !gone.is_empty() {
            replace(dir, &kept, std::slice::from_ref(&path))?;
            taken.extend(gone);
        }
    }
    Ok(taken)
}

/// Writes `rows` to `path` as one Parquet file (atomically).
pub fn write_rows(path: &Path, rows: &[IndexRow]) -> Result<(), Error> {
    let buf = encode(rows).map_err(|m| Error::corrupt(path, m))?;
    write_atomic(path, &buf)
}

/// The index's merge lock: waiting for it, or `None` if another process holds it.
fn merge_lock(dir: &Path, wait: bool) -> Result<Option<File>, Error> {
    let path = dir.join(".merge.lock");
    let lock = File::create(&path).map_err(|e| Error::io(&path, e))?;
    if wait {
        lock.lock().map_err(|e| Error::io(&path, e))?;
        return Ok(Some(lock));
    }
    match lock.try_lock() {
        Ok(()) => Ok(Some(lock)),
        Err(fs::TryLockError::WouldBlock) => Ok(None),
        Err(fs::TryLockError::Error(e)) => Err(Error::io(&path, e)),
    }
}

/// Writes `rows` as a new merged file in `dir`, durably, then removes the files `old`.
fn replace(dir: &Path, rows: &[IndexRow], old: &[PathBuf]) -> Result<(), Error> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let path = dir.join(format!("{MERGED}{nanos}-{}.parquet", std::process::id()));
    write_rows(&path, rows)?;
    // The merged file is durable before any file it replaces goes.
    sync_dir(dir)?;
    for p in old {
        match fs::remove_file(p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(p, e)),
        }
    }
    Ok(())
}

/// Column `name` of `batch` as an array of type `A` (called `ty` in the error).
fn column<A: Array + Clone + 'static>(
    batch: &RecordBatch,
    path: &Path,
    name: &str,
    ty: &str,
) -> Result<A, Error> {
    let array = batch
        .column_by_name(name)
        .ok_or_else(|| Error::corrupt(path, format!("no column `{name}`")))?;
    downcast(array.as_ref(), path, || {
        format!("column `{name}` is not {ty}")
    })
}

/// `array` as type `A`; otherwise the file at `path` is corrupt, with the `problem` given.
fn downcast<A: Array + Clone + 'static>(
    array: &dyn Array,
    path: &Path,
    problem: impl FnOnce() -> String,
) -> Result<A, Error> {
    array
        .as_any()
        .downcast_ref::<A>()
        .cloned()
        .ok_or_else(|| Error::corrupt(path, problem()))
}

/// The `metrics` column of `batch`, to read row by row with [`Metrics::at`].
struct Metrics {
    map: MapArray,
    names: StringArray,
    values: Float64Array,
}

impl Metrics {
    fn of(batch: &RecordBatch, path: &Path) -> Result<Self, Error> {
        let map: MapArray = column(batch, path, "metrics", "a map")?;
        let names = downcast(map.keys().as_ref(), path, || {
            "metric names are not utf8".to_owned()
        })?;
        let values = downcast(map.values().as_ref(), path, || {
            "metric values are not float64".to_owned()
        })?;
        Ok(Metrics { map, names, values })
    }

    /// Row `i`'s metrics (a null value reads as NaN).
    fn at(&self, i: usize) -> NameMap<f64> {
        let offsets = self.map.value_offsets();
        let span = offsets[i].max(0) as usize..offsets[i + 1].max(0) as usize;
        span.map(|j| {
            let v = if self.values.is_null(j) {
                f64::NAN
            } else {
                self.values.value(j)
            };
            (self.names.value(j).to_owned(), v)
        })
        .collect()
    }
}

/// The seed of row `i` (null for an unseeded cell).
fn seed_at(seed: &UInt64Array, i: usize) -> Option<u64> {
    (!seed.is_null(i)).then(|| seed.value(i))
}

fn read_file(path: &Path, rows: &mut Vec<IndexRow>) -> Result<(), Error> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|e| Error::corrupt(path, e))?;
    for batch in reader {
        let batch = batch.map_err(|e| Error::corrupt(path, e))?;
        let strs = |name: &str| column::<StringArray>(&batch, path, name, "utf8");
        let f64s = |name: &str| column::<Float64Array>(&batch, path, name, "float64");
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
        let version: UInt32Array = column(&batch, path, "version", "uint32")?;
        let seed: UInt64Array = column(&batch, path, "seed", "uint64")?;
        let metrics = Metrics::of(&batch, path)?;
        let (started, seconds) = (f64s("started")?, f64s("seconds")?);
        for i in 0..batch.num_rows() {
            rows.push(IndexRow {
                key: key.value(i).into(),
                stage: stage.value(i).into(),
                kind: kind.value(i).into(),
                version: version.value(i),
                cell: cell.value(i).into(),
                label: label.value(i).into(),
                seed: seed_at(&seed, i),
                variant: variant.value(i).into(),
                lineage: lineage.value(i).into(),
                metrics: metrics.at(i),
                started: started.value(i),
                seconds: seconds.value(i),
                host: host.value(i).into(),
                tool_version: tv.value(i).into(),
            });
        }
    }
    Ok(())
}

/// The columns [`read_metrics`] reads, by name: a file with others (or in another order) reads
/// the same.
const METRIC_COLUMNS: [&str; 6] = ["key", "cell", "seed", "metrics", "started", "seconds"];

/// The completion time, id and metrics of each row of the file at `path`.
fn read_metrics_file(path: &Path, rows: &mut Vec<(f64, RunMetrics)>) -> Result<(), Error> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let b = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| Error::corrupt(path, e))?;
    let rows_in_file = usize::try_from(b.metadata().file_metadata().num_rows()).unwrap_or(0);
    rows.reserve(rows_in_file);
    let mask = ProjectionMask::columns(b.parquet_schema(), METRIC_COLUMNS);
    let reader = b
        .with_projection(mask)
        .build()
        .map_err(|e| Error::corrupt(path, e))?;
    for batch in reader {
        let batch = batch.map_err(|e| Error::corrupt(path, e))?;
        let strs = |name: &str| column::<StringArray>(&batch, path, name, "utf8");
        let f64s = |name: &str| column::<Float64Array>(&batch, path, name, "float64");
        let (key, cell) = (strs("key")?, strs("cell")?);
        let seed: UInt64Array = column(&batch, path, "seed", "uint64")?;
        let metrics = Metrics::of(&batch, path)?;
        let (started, seconds) = (f64s("started")?, f64s("seconds")?);
        for i in 0..batch.num_rows() {
            rows.push((
                started.value(i) + seconds.value(i),
                RunMetrics {
                    key: key.value(i).into(),
                    cell: cell.value(i).into(),
                    seed: seed_at(&seed, i),
                    metrics: metrics.at(i),
                },
            ));
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

    fn row(i: u64) -> IndexRow {
        IndexRow {
            key: format!("k{i}"),
            stage: "s".into(),
            kind: "emit".into(),
            version: 1,
            cell: format!("c{i}"),
            label: format!("s[v={i}]"),
            seed: i.is_multiple_of(2).then_some(i),
            variant: format!("s.v={i}"),
            lineage: "{}".into(),
            metrics: [("m".to_string(), i as f64)].into(),
            started: i as f64,
            seconds: 0.5,
            host: "h".into(),
            tool_version: "0.1.0".into(),
        }
    }

    fn parquet_files(dir: &Path) -> Vec<PathBuf> {
        let mut f = files(dir).unwrap();
        f.sort();
        f
    }

    #[test]
    fn the_metrics_read_holds_every_metric_of_the_latest_row_of_each_id() {
        let dir = tempfile::tempdir().unwrap();
        let mut rows: Vec<IndexRow> = (0..6).map(row).collect();
        // A metric only some rows have, a row with none, one with several.
        rows[1].metrics.insert("only_here".into(), 7.5);
        rows[2].metrics.clear();
        rows[4].metrics.insert("a".into(), -1.0);
        for r in &rows[..3] {
            append(dir.path(), r).unwrap();
        }
        compact(dir.path()).unwrap();
        for r in &rows[3..] {
            append(dir.path(), r).unwrap();
        }
        // Rewritten later under the same id: the later row and its metrics win.
        let mut newer = row(3);
        newer.started = 100.0;
        newer.metrics = [("m".to_string(), 30.0), ("late".to_string(), 1.0)].into();
        append(dir.path(), &newer).unwrap();
        let all = read_all(dir.path()).unwrap();
        let want: Vec<RunMetrics> = all.iter().map(RunMetrics::from).collect();
        assert_eq!(read_metrics(dir.path()).unwrap(), want);
        assert_eq!(want.len(), 6);
        assert_eq!(want[1].metrics.get("only_here"), Some(&7.5));
        assert!(want[2].metrics.is_empty());
        assert_eq!(want[5].metrics, newer.metrics);
    }

    #[test]
    fn rows_are_read_by_column_name_whatever_else_a_file_holds() {
        let dir = tempfile::tempdir().unwrap();
        let mut rows: Vec<IndexRow> = (0..4).map(row).collect();
        rows[1].metrics.insert("only_here".into(), 7.5);
        let ours = dir.path().join("ours.parquet");
        write_rows(&ours, &rows).unwrap();
        let batch = ParquetRecordBatchReaderBuilder::try_new(File::open(&ours).unwrap())
            .unwrap()
            .build()
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        fs::remove_file(&ours).unwrap();
        // As another tool might write the dataset: an extra column first, the rest reversed.
        let schema = batch.schema();
        let mut fields = vec![Field::new("note", DataType::Utf8, false)];
        let mut columns: Vec<ArrayRef> = vec![Arc::new(StringArray::from_iter_values(
            ["an extra column"; 4],
        ))];
        for i in (0..batch.num_columns()).rev() {
            fields.push(schema.field(i).clone());
            columns.push(Arc::clone(batch.column(i)));
        }
        let schema = Arc::new(Schema::new(fields));
        let batch = RecordBatch::try_new(Arc::clone(&schema), columns).unwrap();
        let mut w = ArrowWriter::try_new(
            File::create(dir.path().join("foreign.parquet")).unwrap(),
            schema,
            None,
        )
        .unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        assert_eq!(read_all(dir.path()).unwrap(), rows);
        let want: Vec<RunMetrics> = rows.iter().map(RunMetrics::from).collect();
        assert_eq!(read_metrics(dir.path()).unwrap(), want);
    }

    #[test]
    fn compaction_merges_into_one_file_and_reads_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let rows: Vec<IndexRow> = (0..20).map(row).collect();
        for r in rows.iter().rev() {
            append(dir.path(), r).unwrap();
        }
        assert_eq!(
            compact_if_due(dir.path()).unwrap(),
            0,
            "below the threshold"
        );
        assert_eq!(compact(dir.path()).unwrap(), 20);
        let files = parquet_files(dir.path());
        assert_eq!(files.len(), 1);
        assert!(is_merged(&files[0]));
        assert_eq!(read_all(dir.path()).unwrap(), rows);
        // New rows go beside the merged file; the next merge takes both.
        append(dir.path(), &row(20)).unwrap();
        assert_eq!(read_all(dir.path()).unwrap().len(), 21);
        assert_eq!(row_ids(dir.path()).unwrap().len(), 21);
        assert_eq!(compact(dir.path()).unwrap(), 2);
        assert_eq!(parquet_files(dir.path()).len(), 1);
        assert_eq!(read_all(dir.path()).unwrap().len(), 21);
    }

    #[test]
    fn row_ids_tell_ids_apart_by_every_part() {
        let (k1, k2, c1) = ("a".repeat(64), "b".repeat(64), "c".repeat(64));
        // The last of the 64 leading bits differs: a different id.
        let k3 = format!("{}b{}", "a".repeat(15), "a".repeat(48));
        let mut ids = RowIds::default();
        assert!(ids.insert(&k1, &c1, None));
        assert!(!ids.insert(&k1, &c1, None), "already there");
        assert!(ids.insert(&k1, &c1, Some(0)));
        assert!(ids.insert(&k1, &c1, Some(1)));
        assert!(ids.insert(&k2, &c1, None));
        assert!(ids.insert(&k3, &c1, None));
        assert!(ids.insert(&c1, &k1, None), "key and cell swapped");
        // Ids that are not hex digests are kept as they are.
        assert!(ids.insert("k", "c", None));
        assert!(!ids.insert("k", "c", None));
        assert!(ids.insert(&k1.to_uppercase(), &c1, None));
        assert!(
            ids.insert(&k1, &c1, Some(u64::MAX)),
            "the seed that marks no seed"
        );
        assert!(!ids.insert(&k1, &c1, Some(u64::MAX)));
        assert_eq!(ids.len(), 9);
        // What is given up for 24 bytes an id: ids whose keys and cells both share their
        // leading 64 bits are one (2^-128 for two SHA-256 ids).
        let tail = format!("{}{}", "a".repeat(16), "f".repeat(48));
        assert!(!ids.insert(&tail, &c1, None));
    }

    #[test]
    fn a_merge_cut_short_reads_without_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..5 {
            append(dir.path(), &row(i)).unwrap();
        }
        let copy = tempfile::tempdir().unwrap();
        for p in parquet_files(dir.path()) {
            fs::copy(&p, copy.path().join(p.file_name().unwrap())).unwrap();
        }
        compact(dir.path()).unwrap();
        // Killed after the rename, before removing: the merged file beside its sources.
        for p in parquet_files(copy.path()) {
            fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
        }
        // A row rewritten later (the cell recomputed under the same key) wins.
        let mut newer = row(3);
        newer.started = 100.0;
        append(dir.path(), &newer).unwrap();
        assert_eq!(parquet_files(dir.path()).len(), 6);
        let all = read_all(dir.path()).unwrap();
        assert_eq!(all.len(), 5);
        assert_eq!(all.last(), Some(&newer));
        assert_eq!(row_ids(dir.path()).unwrap().len(), 5);
        assert_eq!(compact(dir.path()).unwrap(), 6);
        assert_eq!(read_all(dir.path()).unwrap(), all);
    }

    #[test]
    fn repair_takes_a_cells_rows_out_of_merged_files() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..4 {
            append(dir.path(), &row(i)).unwrap();
        }
        compact(dir.path()).unwrap();
        let taken = take_merged_rows(dir.path(), &["k1", "k3"].into()).unwrap();
        assert_eq!(taken, vec![row(1), row(3)]);
        assert_eq!(read_all(dir.path()).unwrap(), vec![row(0), row(2)]);
        assert_eq!(parquet_files(dir.path()).len(), 1);
    }

    #[test]
    fn an_unreadable_file_is_skipped_and_left_in_place() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..3 {
            append(dir.path(), &row(i)).unwrap();
        }
        let bad = dir.path().join("bad.parquet");
        fs::write(&bad, b"not parquet").unwrap();
        assert_eq!(read_all(dir.path()).unwrap().len(), 3);
        assert_eq!(compact(dir.path()).unwrap(), 3);
        assert!(bad.exists());
        assert_eq!(read_all(dir.path()).unwrap().len(), 3);
    }
}
