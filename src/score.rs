//! `spo-pipe score`: any scorer on a folder of images or a Parquet of images + prompts, outside
//! any pipeline, into a Parquet of per-image scores. The pipeline's score stage uses the same
//! `spo_clip::Scorer`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use arrow_array::cast::AsArray;
use arrow_array::{Array, Float64Array, RecordBatch, StringArray, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use candle_core::Device;
use image::RgbImage;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use spo_clip::{Metric, ScoreOptions, Scorer};

use crate::UsageError;

/// What to score, as given on the command line.
pub struct ScoreArgs<'a> {
    pub metric: &'a str,
    pub weights: &'a Path,
    pub images: &'a Path,
    pub prompts: Option<&'a Path>,
    pub image_column: &'a str,
    pub prompt_column: &'a str,
    pub out: &'a Path,
    pub batch: usize,
}

/// Images with where each came from, and their prompts (if any; `None` for a null one).
struct Inputs {
    sources: Vec<String>,
    images: Vec<RgbImage>,
    prompts: Vec<Option<String>>,
}

/// Scores and writes `out`; returns the number of images and the mean score.
pub fn run(a: &ScoreArgs) -> anyhow::Result<(usize, f64)> {
    let metric: Metric = a
        .metric
        .parse()
        .map_err(|e| UsageError(format!("--metric: {e}")))?;
    let inputs = if a.images.is_dir() {
        folder(a.images, a.prompts)?
    } else {
        table(a.images, a.image_column, a.prompt_column)?
    };
    if inputs.images.is_empty() {
        return Err(UsageError(format!("{}: no images found", a.images.display())).into());
    }
    if metric.needs_prompts() && inputs.prompts.len() != inputs.images.len() {
        return Err(UsageError(format!("metric `{}` needs a prompt per image: give --prompts (one line per image, in file-name order) or a Parquet with a `{}` column", a.metric, a.prompt_column)).into());
    }
    let device = spo_stages::device::device();
    let scorer = Scorer::load(
        metric,
        a.weights,
        &ScoreOptions {
            batch_size: a.batch,
            ..Default::default()
        },
        &device,
    )
    .with_context(|| format!("loading {} from {}", a.metric, a.weights.display()))?;
    let mut prompts: Vec<&str> = Vec::with_capacity(inputs.prompts.len());
    for (p, source) in inputs.prompts.iter().zip(&inputs.sources) {
        match p {
            Some(p) => prompts.push(p),
            None if metric.needs_prompts() => {
                return Err(UsageError(format!(
                    "{}: {source}: the prompt (column `{}`) is null",
                    a.images.display(),
                    a.prompt_column
                ))
                .into());
            }
            None => prompts.push(""),
        }
    }
    let scores = scorer
        .score(&inputs.images, &prompts)
        .with_context(|| format!("scoring {}", a.images.display()))?;
    if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
        let culprit = match non_finite_tensor(a.weights)? {
            Some((file, tensor)) => {
                format!("tensor `{tensor}` of {} is not finite", file.display())
            }
            None => format!("check the weights in {}", a.weights.display()),
        };
        anyhow::bail!(
            "{}: the {} score of {} is {}: {culprit}; nothing was written",
            a.images.display(),
            a.metric,
            inputs.sources[i],
            scores[i]
        );
    }
    write(a.out, a.metric, &inputs, &scores)?;
    let mean = scores.iter().sum::<f64>() / scores.len() as f64;
    Ok((scores.len(), mean))
}

/// Decodes an image; a JPEG must also decode in zune-jpeg's strict mode, since the lenient mode
/// the `image` crate uses fills a truncated or corrupt stream with grey without a word.
fn decode(bytes: &[u8], what: &str) -> anyhow::Result<RgbImage> {
    if image::guess_format(bytes).ok() == Some(image::ImageFormat::Jpeg) {
        let options = zune_core::options::DecoderOptions::default().set_strict_mode(true);
        zune_jpeg::JpegDecoder::new_with_options(
            zune_core::bytestream::ZCursor::new(bytes),
            options,
        )
        .decode()
        .map_err(|e| anyhow::anyhow!("{what}: a truncated or corrupt JPEG: {e:?}"))?;
    }
    Ok(image::load_from_memory(bytes)
        .with_context(|| format!("{what}: not a decodable image"))?
        .to_rgb8())
}

/// The first safetensors file (`weights` itself, or one in the folder `weights`) and tensor in it
/// holding a NaN or an infinity.
fn non_finite_tensor(weights: &Path) -> anyhow::Result<Option<(PathBuf, String)>> {
    let files: Vec<PathBuf> = if weights.is_dir() {
        let mut f: Vec<PathBuf> = std::fs::read_dir(weights)
            .with_context(|| format!("reading {}", weights.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        f.sort();
        f
    } else {
        vec![weights.to_owned()]
    };
    for file in files {
        let Ok(tensors) = candle_core::safetensors::load(&file, &Device::Cpu) else {
            continue;
        };
        let mut names: Vec<&String> = tensors.keys().collect();
        names.sort();
        for name in names {
            let finite = tensors[name]
                .to_dtype(candle_core::DType::F32)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .map(|v| v.iter().all(|x| x.is_finite()));
            if finite.is_ok_and(|ok| !ok) {
                return Ok(Some((file, name.clone())));
            }
        }
    }
    Ok(None)
}

fn folder(dir: &Path, prompts: Option<&Path>) -> anyhow::Result<Inputs> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                matches!(
                    e.to_ascii_lowercase().as_str(),
                    "png" | "jpg" | "jpeg" | "webp"
                )
            })
        })
        .collect();
    files.sort();
    let images = files
        .iter()
        .map(|f| {
            decode(
                &std::fs::read(f).with_context(|| format!("reading {}", f.display()))?,
                &f.display().to_string(),
            )
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let prompts = match prompts {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            let lines: Vec<Option<String>> = text.lines().map(|l| Some(l.to_owned())).collect();
            if lines.len() != files.len() {
                return Err(UsageError(format!(
                    "{}: {} lines for {} images",
                    p.display(),
                    lines.len(),
                    files.len()
                ))
                .into());
            }
            lines
        }
        None => vec![],
    };
    Ok(Inputs {
        sources: files.iter().map(|f| f.display().to_string()).collect(),
        images,
        prompts,
    })
}

fn table(path: &Path, image_col: &str, prompt_col: &str) -> anyhow::Result<Inputs> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .with_context(|| format!("{}: not a readable Parquet file", path.display()))?;
    let mut out = Inputs {
        sources: vec![],
        images: vec![],
        prompts: vec![],
    };
    for batch in reader {
        let batch: RecordBatch =
            batch.with_context(|| format!("{}: corrupt row group", path.display()))?;
        let images = batch.column_by_name(image_col).ok_or_else(|| {
            UsageError(format!(
                "{}: no column `{image_col}` (set --image-column)",
                path.display()
            ))
        })?;
        let images = images.as_binary_opt::<i32>().ok_or_else(|| {
            UsageError(format!(
                "{}: column `{image_col}` is not binary image bytes",
                path.display()
            ))
        })?;
        let prompts = batch
            .column_by_name(prompt_col)
            .and_then(|c| c.as_string_opt::<i32>().cloned());
        for i in 0..batch.num_rows() {
            let row = out.sources.len();
            let what = format!("{}: row {row}, column `{image_col}`", path.display());
            out.images.push(decode(images.value(i), &what)?);
            if let Some(p) = &prompts {
                out.prompts
                    .push((!p.is_null(i)).then(|| p.value(i).to_owned()));
            }
            out.sources.push(format!("row {row}"));
        }
    }
    Ok(out)
}

fn write(out: &Path, metric: &str, inputs: &Inputs, scores: &[f64]) -> anyhow::Result<()> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("index", DataType::UInt64, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("prompt", DataType::Utf8, true),
        Field::new(metric, DataType::Float64, false),
    ]));
    let prompts: Vec<Option<&str>> = (0..scores.len())
        .map(|i| inputs.prompts.get(i).and_then(Option::as_deref))
        .collect();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(UInt64Array::from(
                (0..scores.len() as u64).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(inputs.sources.clone())),
            Arc::new(StringArray::from(prompts)),
            Arc::new(Float64Array::from(scores.to_vec())),
        ],
    )?;
    let tmp = out.with_extension("parquet.tmp");
    let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut w = ArrowWriter::try_new(file, schema, None)?;
    w.write(&batch)?;
    w.close()?;
    std::fs::rename(&tmp, out).with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}
