//! Pick-a-Pic v1 in its own Parquet schema: the schema, a streaming pairs writer (the `world`
//! stage writes its generic pairs with it), and the `pickapic` stage kind, which ingests real
//! shards (local files, or the Parquet files of a `download` input), checks every row and
//! writes them to one `pairs.parquet` in the canonical column order.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Float64Builder, Int64Builder, StringBuilder,
    TimestampNanosecondBuilder,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sha2::{Digest, Sha256};
use spo_core::{ParamSpec, StageContext, StageError, StageKind};

use crate::error::{Error, Result};
use crate::world_parquet::{TableWriter, bool_at, bytes_at, col, f64_at, i64_at, str_at};

/// The columns of Pick-a-Pic v1 (`yuvalkirstain/pickapic_v1`), in its order.
pub const COLUMNS: [&str; 19] = [
    "are_different",
    "best_image_uid",
    "caption",
    "created_at",
    "has_label",
    "image_0_uid",
    "image_0_url",
    "image_1_uid",
    "image_1_url",
    "jpg_0",
    "jpg_1",
    "label_0",
    "label_1",
    "model_0",
    "model_1",
    "ranking_id",
    "user_id",
    "num_example_per_prompt",
    "__index_level_0__",
];

/// The Pick-a-Pic v1 schema: strings, `binary` image bytes, `float64` labels, `int64` ids,
/// `timestamp[ns]` creation time.
pub fn schema() -> SchemaRef {
    use DataType::*;
    let f = |name: &str, ty: DataType| Field::new(name, ty, true);
    Arc::new(Schema::new(vec![
        f("are_different", Boolean),
        f("best_image_uid", Utf8),
        f("caption", Utf8),
        f("created_at", Timestamp(TimeUnit::Nanosecond, None)),
        f("has_label", Boolean),
        f("image_0_uid", Utf8),
        f("image_0_url", Utf8),
        f("image_1_uid", Utf8),
        f("image_1_url", Utf8),
        f("jpg_0", Binary),
        f("jpg_1", Binary),
        f("label_0", Float64),
        f("label_1", Float64),
        f("model_0", Utf8),
        f("model_1", Utf8),
        f("ranking_id", Int64),
        f("user_id", Int64),
        f("num_example_per_prompt", Int64),
        f("__index_level_0__", Int64),
    ]))
}

/// One preference pair, as a row of the Pick-a-Pic schema.
#[derive(Debug, Clone, PartialEq)]
pub struct PairRow {
    pub are_different: bool,
    /// The preferred image's uid; empty for a tie.
    pub best_image_uid: String,
    pub caption: String,
    /// Nanoseconds since the Unix epoch, when known.
    pub created_at: Option<i64>,
    pub has_label: bool,
    pub image_0_uid: String,
    pub image_0_url: Option<String>,
    pub image_1_uid: String,
    pub image_1_url: Option<String>,
    /// Encoded image bytes (JPEG in Pick-a-Pic, PNG in the world).
    pub jpg_0: Vec<u8>,
    pub jpg_1: Vec<u8>,
    pub label_0: f64,
    pub label_1: f64,
    pub model_0: Option<String>,
    pub model_1: Option<String>,
    pub ranking_id: i64,
    pub user_id: i64,
    pub num_example_per_prompt: i64,
    pub index: i64,
}

impl PairRow {
    /// The row of a generated pair: two PNGs of `caption` with their labels and generators'
    /// names; uids are the first 16 bytes of each PNG's SHA-256 in hex, as Pick-a-Pic's are ids.
    pub(crate) fn generated(
        index: i64,
        caption: String,
        pngs: [Vec<u8>; 2],
        labels: [f64; 2],
        models: [&str; 2],
        num_example_per_prompt: i64,
    ) -> PairRow {
        let uid = |b: &[u8]| hex::encode(&Sha256::digest(b)[..16]);
        let [jpg_0, jpg_1] = pngs;
        let (u0, u1) = (uid(&jpg_0), uid(&jpg_1));
        let best_image_uid = match labels {
            [l0, l1] if l0 > l1 => u0.clone(),
            [l0, l1] if l1 > l0 => u1.clone(),
            _ => String::new(),
        };
        PairRow {
            are_different: jpg_0 != jpg_1,
            best_image_uid,
            caption,
            created_at: None,
            has_label: true,
            image_0_uid: u0,
            image_0_url: None,
            image_1_uid: u1,
            image_1_url: None,
            jpg_0,
            jpg_1,
            label_0: labels[0],
            label_1: labels[1],
            model_0: Some(models[0].to_owned()),
            model_1: Some(models[1].to_owned()),
            ranking_id: index,
            user_id: 0,
            num_example_per_prompt,
            index,
        }
    }
}

/// Streams pair rows into a Pick-a-Pic-schema Parquet artifact.
pub(crate) struct PairsWriter<'a> {
    table: TableWriter<'a>,
    pending: Vec<PairRow>,
}

impl<'a> PairsWriter<'a> {
    const BATCH: usize = 256;

    pub(crate) fn create(cx: &'a mut StageContext, rel: &str) -> Result<Self> {
        Ok(PairsWriter {
            table: TableWriter::create(cx, rel, schema())?,
            pending: Vec::new(),
        })
    }

    pub(crate) fn push(&mut self, row: PairRow) -> Result<()> {
        self.pending.push(row);
        if self.pending.len() >= Self::BATCH {
            self.flush()
        } else {
            Ok(())
        }
    }

    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.pending);
        let strs = |f: &dyn Fn(&PairRow) -> Option<&str>| {
            let mut b = StringBuilder::new();
            rows.iter().for_each(|r| b.append_option(f(r)));
            col(b.finish())
        };
        let bools = |f: &dyn Fn(&PairRow) -> bool| {
            let mut b = BooleanBuilder::new();
            rows.iter().for_each(|r| b.append_value(f(r)));
            col(b.finish())
        };
        let bins = |f: &dyn Fn(&PairRow) -> &[u8]| {
            let mut b = BinaryBuilder::new();
            rows.iter().for_each(|r| b.append_value(f(r)));
            col(b.finish())
        };
        let floats = |f: &dyn Fn(&PairRow) -> f64| {
            let mut b = Float64Builder::new();
            rows.iter().for_each(|r| b.append_value(f(r)));
            col(b.finish())
        };
        let ints = |f: &dyn Fn(&PairRow) -> i64| {
            let mut b = Int64Builder::new();
            rows.iter().for_each(|r| b.append_value(f(r)));
            col(b.finish())
        };
        let mut created = TimestampNanosecondBuilder::new();
        rows.iter()
            .for_each(|r| created.append_option(r.created_at));
        let columns = vec![
            bools(&|r| r.are_different),
            strs(&|r| Some(&r.best_image_uid)),
            strs(&|r| Some(&r.caption)),
            col(created.finish()),
            bools(&|r| r.has_label),
            strs(&|r| Some(&r.image_0_uid)),
            strs(&|r| r.image_0_url.as_deref()),
            strs(&|r| Some(&r.image_1_uid)),
            strs(&|r| r.image_1_url.as_deref()),
            bins(&|r| &r.jpg_0),
            bins(&|r| &r.jpg_1),
            floats(&|r| r.label_0),
            floats(&|r| r.label_1),
            strs(&|r| r.model_0.as_deref()),
            strs(&|r| r.model_1.as_deref()),
            ints(&|r| r.ranking_id),
            ints(&|r| r.user_id),
            ints(&|r| r.num_example_per_prompt),
            ints(&|r| r.index),
        ];
        self.table.write(columns)
    }

    pub(crate) fn finish(mut self) -> Result<()> {
        self.flush()?;
        self.table.finish()
    }
}

/// Why a shard was refused.
fn shard_error(path: &Path, message: impl std::fmt::Display) -> Error {
    Error::failed(format!("pick-a-pic shard {}: {message}", path.display()))
}

/// Opens a shard and checks that it has every Pick-a-Pic column but the pandas index.
fn open_shard(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>> {
    let file = File::open(path).map_err(|e| shard_error(path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| shard_error(path, format!("not a readable Parquet file: {e}")))?;
    let have: Vec<&str> = builder
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    let missing: Vec<&str> = COLUMNS
        .iter()
        .copied()
        .filter(|c| *c != "__index_level_0__" && !have.contains(c))
        .collect();
    if !missing.is_empty() {
        return Err(shard_error(
            path,
            format!(
                "missing column{} {} (it has: {})",
                if missing.len() > 1 { "s" } else { "" },
                missing
                    .iter()
                    .map(|c| format!("`{c}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                have.join(", ")
            ),
        ));
    }
    Ok(builder)
}

/// Reads and checks the rows of one shard, handing each to `each` until it returns `false`;
/// returns how many rows were read.
pub(crate) fn read_shard(
    path: &Path,
    decode_images: bool,
    mut each: impl FnMut(PairRow) -> Result<bool>,
) -> Result<u64> {
    let reader = open_shard(path)?
        .with_batch_size(64)
        .build()
        .map_err(|e| shard_error(path, e))?;
    let mut row = 0u64;
    for batch in reader {
        let batch: RecordBatch =
            batch.map_err(|e| shard_error(path, format!("unreadable after row {row}: {e}")))?;
        let c = |name: &str| batch.column_by_name(name).map(|a| a.as_ref());
        for i in 0..batch.num_rows() {
            let at = |what: &str| shard_error(path, format!("row {row}: {what}"));
            let get = |name: &str| c(name).ok_or_else(|| at(&format!("missing column `{name}`")));
            let string = |name: &str| -> Result<Option<String>> {
                Ok(str_at(get(name)?, i).map(str::to_owned))
            };
            let need_str = |name: &str| {
                string(name)?.ok_or_else(|| at(&format!("`{name}` is null or not a string")))
            };
            let image = |name: &str| -> Result<Vec<u8>> {
                let bytes = bytes_at(get(name)?, i)
                    .ok_or_else(|| at(&format!("`{name}` is null or not binary")))?;
                if decode_images {
                    image::load_from_memory(bytes).map_err(|e| {
                        at(&format!(
                            "`{name}` is not a decodable image ({} bytes): {e}",
                            bytes.len()
                        ))
                    })?;
                }
                Ok(bytes.to_vec())
            };
            let label = |name: &str| -> Result<f64> {
                let v = f64_at(get(name)?, i)
                    .ok_or_else(|| at(&format!("`{name}` is null or not float64")))?;
                if (0.0..=1.0).contains(&v) {
                    Ok(v)
                } else {
                    Err(at(&format!("`{name}` = {v} is outside [0, 1]")))
                }
            };
            let int = |name: &str| -> Result<i64> {
                i64_at(get(name)?, i).ok_or_else(|| at(&format!("`{name}` is null or not int64")))
            };
            let created_at = timestamp_ns_at(get("created_at")?, i)
                .map_err(|ty| at(&format!("`created_at` is {ty}, not a timestamp")))?;
            let pair = PairRow {
                are_different: bool_at(get("are_different")?, i)
                    .ok_or_else(|| at("`are_different` is null or not boolean"))?,
                best_image_uid: string("best_image_uid")?.unwrap_or_default(),
                caption: need_str("caption")?,
                created_at,
                has_label: bool_at(get("has_label")?, i)
                    .ok_or_else(|| at("`has_label` is null or not boolean"))?,
                image_0_uid: need_str("image_0_uid")?,
                image_0_url: string("image_0_url")?,
                image_1_uid: need_str("image_1_uid")?,
                image_1_url: string("image_1_url")?,
                jpg_0: image("jpg_0")?,
                jpg_1: image("jpg_1")?,
                label_0: label("label_0")?,
                label_1: label("label_1")?,
                model_0: string("model_0")?,
                model_1: string("model_1")?,
                ranking_id: int("ranking_id")?,
                user_id: int("user_id")?,
                num_example_per_prompt: int("num_example_per_prompt")?,
                index: match c("__index_level_0__") {
                    Some(a) => i64_at(a, i)
                        .ok_or_else(|| at("`__index_level_0__` is null or not int64"))?,
                    None => row as i64,
                },
            };
            row += 1;
            if !each(pair)? {
                return Ok(row);
            }
        }
    }
    Ok(row)
}

/// A timestamp cell of any unit, in nanoseconds; `Err` with the type for a non-timestamp column.
fn timestamp_ns_at(col: &dyn arrow_array::Array, i: usize) -> Result<Option<i64>, DataType> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{
        TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
        TimestampSecondType,
    };
    let DataType::Timestamp(unit, _) = col.data_type() else {
        return Err(col.data_type().clone());
    };
    if col.is_null(i) {
        return Ok(None);
    }
    Ok(Some(match unit {
        TimeUnit::Nanosecond => col.as_primitive::<TimestampNanosecondType>().value(i),
        TimeUnit::Microsecond => col
            .as_primitive::<TimestampMicrosecondType>()
            .value(i)
            .saturating_mul(1_000),
        TimeUnit::Millisecond => col
            .as_primitive::<TimestampMillisecondType>()
            .value(i)
            .saturating_mul(1_000_000),
        TimeUnit::Second => col
            .as_primitive::<TimestampSecondType>()
            .value(i)
            .saturating_mul(1_000_000_000),
    }))
}

spo_core::stage_params! {
    /// The params of `pickapic`.
    pub struct PickAPicParams {
        /// local shard files or directories of *.parquet; empty: the .parquet files of the
        /// inputs
        shards: Vec<String> = str_list(&[]),
        /// keep at most this many rows (0: all)
        limit: usize = int(0).min(0.0),
        /// decode every jpg_0 / jpg_1 to check it
        decode_images: bool = bool(true),
    }
}

/// The `pickapic` stage kind.
pub struct PickAPic;

impl PickAPic {
    /// The shard files to read: the `shards` param (files, or directories of `*.parquet`),
    /// else every `.parquet` file of the inputs (a `download` stage's).
    fn shards(cx: &StageContext) -> Result<Vec<PathBuf>> {
        let listed = PickAPicParams::from_params(cx.params())?.shards;
        let mut out = Vec::new();
        if listed.is_empty() {
            for input in cx.inputs() {
                for f in input
                    .manifest
                    .files
                    .iter()
                    .filter(|f| f.path.ends_with(".parquet"))
                {
                    out.push(input.file(&f.path)?);
                }
            }
            if out.is_empty() {
                return Err(StageError::Failed("no shards: set `shards` or add a stage that downloads Pick-a-Pic Parquet files to `needs`".into()).into());
            }
        }
        for s in listed {
            let p = PathBuf::from(&s);
            if p.is_dir() {
                let mut files: Vec<PathBuf> = std::fs::read_dir(&p)
                    .map_err(|e| StageError::io(&p, e))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|f| f.extension().is_some_and(|x| x == "parquet"))
                    .collect();
                files.sort();
                if files.is_empty() {
                    return Err(StageError::Failed(format!(
                        "shard directory {} holds no .parquet file",
                        p.display()
                    ))
                    .into());
                }
                out.extend(files);
            } else if p.is_file() {
                out.push(p);
            } else {
                return Err(StageError::Failed(format!(
                    "pick-a-pic shard {}: no such file or directory",
                    p.display()
                ))
                .into());
            }
        }
        Ok(out)
    }
}

impl StageKind for PickAPic {
    fn name(&self) -> &'static str {
        "pickapic"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "Ingest Pick-a-Pic v1 Parquet shards (local or downloaded), checking every row, into pairs.parquet"
    }
    fn params(&self) -> Vec<ParamSpec> {
        PickAPicParams::specs()
    }
    fn run(&self, cx: &mut StageContext) -> Result<(), StageError> {
        let shards = Self::shards(cx)?;
        // Check every shard's schema before writing anything.
        for s in &shards {
            open_shard(s)?;
        }
        let PickAPicParams {
            limit,
            decode_images: decode,
            ..
        } = PickAPicParams::from_params(cx.params())?;
        let (mut rows, mut ties) = (0u64, 0u64);
        let mut captions: HashMap<String, u64> = HashMap::new();
        let staged = cx.out_dir().join("pairs.parquet");
        let bar = cx.progress(if limit > 0 { limit as u64 } else { 0 }, "rows");
        let mut out = PairsWriter::create(cx, "pairs.parquet")?;
        let ingest = shards.iter().try_for_each(|s| {
            if limit > 0 && rows >= limit as u64 {
                return Ok(());
            }
            read_shard(s, decode, |row| {
                rows += 1;
                ties += u64::from(row.label_0 == row.label_1);
                *captions.entry(row.caption.clone()).or_default() += 1;
                out.push(row)?;
                bar.inc(1);
                Ok(limit == 0 || rows < limit as u64)
            })
            .map(drop)
        });
        if let Err(e) = ingest {
            // The orchestrator commits nothing of a failed cell; leave no half table either.
            drop(out);
            let _ = std::fs::remove_file(&staged);
            return Err(e.into());
        }
        bar.finish_and_clear();
        out.finish()?;
        cx.metric("pairs", rows as f64);
        cx.metric("shards", shards.len() as f64);
        cx.metric("prompts", captions.len() as f64);
        cx.metric(
            "tie_share",
            if rows == 0 {
                0.0
            } else {
                ties as f64 / rows as f64
            },
        );
        Ok(())
    }
}
