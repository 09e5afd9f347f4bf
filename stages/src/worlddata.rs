//! Reading the `world` stage's outputs back: the atlas, the prompt sets with their scenes, and
//! the generic preference pairs, for the model stages that train and evaluate in the world.

use std::fs::File;
use std::path::Path;

use image::RgbImage;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use spo_core::{Input, StageError};
use spo_world::{Annotator, Atlas, Scene};

use crate::error::{At, Result};
use crate::world_parquet::{bytes_at, f64_at, i64_at, str_at};

/// A prompt with the scene it describes.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub text: String,
    pub scene: Scene,
}

/// A generic preference pair, as Pick-a-Pic gives them.
#[derive(Debug, Clone)]
pub struct Pair {
    pub caption: String,
    pub images: [RgbImage; 2],
    /// `label_0`, `label_1`: 1/0, 0/1, or 0.5/0.5 for a tie.
    pub labels: [f64; 2],
    pub num_example_per_prompt: f64,
}

/// The world a model stage works in.
pub struct WorldData {
    pub atlas: Atlas,
    pub canvas: u32,
    pub train: Vec<Prompt>,
    pub validation: Vec<Prompt>,
}

impl WorldData {
    /// Loads the atlas and prompt sets from a `world` input.
    pub fn load(world: &Input) -> Result<WorldData> {
        let canvas = world.manifest.params.int("canvas")? as u32;
        let objects = world.file("objects.parquet")?;
        let mut emojis = Vec::new();
        each_row(&objects, &["emoji"], |cols, i| {
            emojis.push(
                str_at(cols[0], i)
                    .ok_or_else(|| bad(&objects, i, "emoji"))?
                    .to_owned(),
            );
            Ok(())
        })?;
        let refs: Vec<&str> = emojis.iter().map(String::as_str).collect();
        let atlas = Atlas::from_emojis(&refs, canvas)?;
        let train = prompts(&world.file("prompts_train.parquet")?, &atlas)?;
        let validation = prompts(&world.file("prompts_validation.parquet")?, &atlas)?;
        Ok(WorldData {
            atlas,
            canvas,
            train,
            validation,
        })
    }
}

/// Loads the generic preference pairs of a `world` (or Pick-a-Pic-shaped) input, at most `limit` (0: all).
pub fn load_pairs(world: &Input, limit: usize) -> Result<Vec<Pair>> {
    let path = world.file("pairs.parquet")?;
    let mut pairs = Vec::new();
    let names = [
        "caption",
        "jpg_0",
        "jpg_1",
        "label_0",
        "label_1",
        "num_example_per_prompt",
    ];
    each_row(&path, &names, |c, i| {
        if limit > 0 && pairs.len() >= limit {
            return Ok(());
        }
        let decode = |col: usize| -> Result<RgbImage> {
            let b = bytes_at(c[col], i).ok_or_else(|| bad(&path, i, names[col]))?;
            Ok(image::load_from_memory(b)
                .map(|im| im.to_rgb8())
                .map_err(|e| {
                    StageError::Failed(format!(
                        "{}: row {i}: `{}` is not an image: {e}",
                        path.display(),
                        names[col]
                    ))
                })?)
        };
        pairs.push(Pair {
            caption: str_at(c[0], i)
                .ok_or_else(|| bad(&path, i, "caption"))?
                .to_owned(),
            images: [decode(1)?, decode(2)?],
            labels: [
                f64_at(c[3], i).ok_or_else(|| bad(&path, i, "label_0"))?,
                f64_at(c[4], i).ok_or_else(|| bad(&path, i, "label_1"))?,
            ],
            num_example_per_prompt: i64_at(c[5], i)
                .ok_or_else(|| bad(&path, i, "num_example_per_prompt"))?
                .max(1) as f64,
        });
        Ok(())
    })?;
    Ok(pairs)
}

/// The simulated annotator a `world` input was built with (its params).
pub fn world_annotator(world: &Input) -> Result<Annotator> {
    let p = &world.manifest.params;
    Ok(Annotator {
        alignment_weight: p.float("alignment_weight")?,
        detail_weight: p.float("detail_weight")?,
        noise: p.float("annotator_noise")?,
        tie_margin: p.float("tie_margin")?,
    })
}

fn prompts(path: &Path, atlas: &Atlas) -> Result<Vec<Prompt>> {
    let mut out = Vec::new();
    each_row(path, &["prompt", "scene"], |c, i| {
        let text = str_at(c[0], i)
            .ok_or_else(|| bad(path, i, "prompt"))?
            .to_owned();
        let code = str_at(c[1], i).ok_or_else(|| bad(path, i, "scene"))?;
        let scene = Scene::from_code(atlas, code)
            .map_err(|e| StageError::Failed(format!("{}: row {i}: {e}", path.display())))?;
        out.push(Prompt { text, scene });
        Ok(())
    })?;
    Ok(out)
}

fn bad(path: &Path, row: usize, col: &str) -> StageError {
    StageError::Failed(format!(
        "{}: row {row}: column `{col}` is missing or of the wrong type",
        path.display()
    ))
}

/// Calls `f(columns, row)` for every row of the Parquet file at `path`, with `names` resolved.
pub(crate) fn each_row(
    path: &Path,
    names: &[&str],
    mut f: impl FnMut(&[&dyn arrow_array::Array], usize) -> Result<()>,
) -> Result<()> {
    let file = File::open(path).map_err(|e| StageError::io(path, e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|e| {
            StageError::Failed(format!(
                "{}: not a readable Parquet file: {e}",
                path.display()
            ))
        })?;
    for batch in reader {
        let batch = batch.at(path)?;
        let cols: Vec<&dyn arrow_array::Array> = names
            .iter()
            .map(|n| {
                batch.column_by_name(n).map(|c| c.as_ref()).ok_or_else(|| {
                    StageError::Failed(format!("{}: no column `{n}`", path.display()))
                })
            })
            .collect::<Result<_, _>>()?;
        for i in 0..batch.num_rows() {
            f(&cols, i)?;
        }
    }
    Ok(())
}
