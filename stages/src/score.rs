//! The `score` stage kind and the in-world scoring functions behind it and `spo-pipe score`.
//!
//! Per generated image (one row of the sampling stage's `samples.parquet`):
//!
//! | column | what it is |
//! |---|---|
//! | `pickscore` | the PickScore analogue (`pickscore-train`): `exp(logit_scale)·cos(img, txt)` |
//! | `aesthetic` | the in-world LAION-style head (`aesthetic-train`) on the frozen CLIP's normalised image embedding: predicted detail quality |
//! | `clipscore` | torchmetrics' CLIP score with the pretrained in-world CLIP: `max(100·cos, 0)` |
//! | `detail` | the graded detail-quality oracle (spo-world): 1 / (1 + (d / 0.03)²), d the high-pass distance to the nearest clean render |
//! | `grain` | the image's own high-frequency energy (RMS of its three finest Laplacian bands) |
//! | `prompt_rmse` | RMS pixel distance to the clean render of the prompted scene (layout and detail together) |
//! | `object`, `colour`, `position`, `count` | the GenEval-like alignment oracle: each part right or wrong |
//! | `alignment` | the share of those four parts right |
//!
//! The models are trained in the world, so their numbers are not comparable with the paper's
//! released-weights scores; the oracles are exact. The stage records the mean of each column
//! as a metric, plus `detail_sd` (the spread of detail over the images) and `geneval_overall`,
//! the share of images with all four parts right (GenEval's per-image correctness).

use std::sync::Arc;

use arrow_array::{BooleanArray, Float64Array, Int64Array, StringArray};
use arrow_schema::{DataType, Field, Schema};
use candle_core::Device;
use image::RgbImage;
use indicatif::ProgressBar;
use spo_core::{Input, ParamSpec, StageContext, StageError, StageKind};
use spo_world::{Atlas, Layout, Scene};

use crate::aesthetic::AestheticHead;
use crate::clip_train::WorldClip;
use crate::error::Result;
use crate::world_parquet::{bytes_at, col, i64_at, str_at, write_table};
use crate::worlddata::{WorldData, each_row};

/// The file of generated images a `score` cell reads from one of its inputs.
pub const SAMPLES: &str = "samples.parquet";

/// The in-world scorers, loaded.
pub struct InWorldScorers {
    /// The world's objects, for the oracles.
    pub atlas: Atlas,
    /// The PickScore analogue.
    pub pickscore: WorldClip,
    /// The pretrained CLIP: the aesthetic head's backbone and the CLIP-score model.
    pub clip: WorldClip,
    /// The aesthetic head.
    pub aesthetic: AestheticHead,
}

impl InWorldScorers {
    /// Loads the scorers from the committed cells of `world`, `pickscore-train` and
    /// `aesthetic-train` (which carries its CLIP backbone, the `clip-pretrain` model).
    pub fn load(
        world: &Input,
        pickscore: &Input,
        aesthetic: &Input,
        device: &Device,
    ) -> Result<InWorldScorers> {
        let clip = WorldClip::load(aesthetic, device)?;
        let head = AestheticHead::load(aesthetic, device)?;
        if head.config.input != clip.model.config().projection_dim {
            return Err(StageError::Input {
                need: aesthetic.stage.clone(),
                message: format!(
                    "the aesthetic head takes {}-wide embeddings but its CLIP makes {}",
                    head.config.input,
                    clip.model.config().projection_dim
                ),
            }
            .into());
        }
        Ok(InWorldScorers {
            atlas: WorldData::load(world)?.atlas,
            pickscore: WorldClip::load(pickscore, device)?,
            clip,
            aesthetic: head,
        })
    }

    /// Scores `images`, image `i` generated for `prompts[i]` describing `scenes[i]`.
    pub fn score(
        &self,
        images: &[RgbImage],
        prompts: &[&str],
        scenes: &[Scene],
    ) -> Result<Vec<ImageScores>> {
        same_lengths(images, prompts, scenes)?;
        let refs: Vec<&RgbImage> = images.iter().collect();
        let pick = pickscores(&self.pickscore, &refs, prompts)?;
        let clipscore = clipscores(&self.clip, &refs, prompts)?;
        let aesthetic = self.aesthetic.rate(&self.clip, &refs)?;
        let oracles = oracle_scores(&self.atlas, scenes, &refs)?;
        Ok(oracles
            .into_iter()
            .enumerate()
            .map(|(i, o)| ImageScores {
                pickscore: pick[i],
                aesthetic: aesthetic[i],
                clipscore: clipscore[i],
                oracle: o,
            })
            .collect())
    }

    /// [`InWorldScorers::score`] of many images, `EVAL_BATCH` at a time (the batches `score`
    /// and `curve` both score in, so their numbers agree to the bit), advancing `pb` per batch.
    pub fn score_all(
        &self,
        images: &[RgbImage],
        prompts: &[&str],
        scenes: &[Scene],
        pb: &ProgressBar,
    ) -> Result<Vec<ImageScores>> {
        same_lengths(images, prompts, scenes)?;
        let batch = crate::clip_train::EVAL_BATCH;
        let mut scores = Vec::with_capacity(images.len());
        for ((images, prompts), scenes) in images
            .chunks(batch)
            .zip(prompts.chunks(batch))
            .zip(scenes.chunks(batch))
        {
            scores.extend(self.score(images, prompts, scenes)?);
            pb.inc(images.len() as u64);
        }
        Ok(scores)
    }
}

/// What the oracles say about one image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OracleScores {
    /// Graded detail quality in (0, 1].
    pub detail: f64,
    /// High-frequency energy of the image.
    pub grain: f64,
    /// RMS distance to the clean render of the prompted scene.
    pub prompt_rmse: f64,
    pub object: bool,
    pub colour: bool,
    pub position: bool,
    pub count: bool,
}

impl OracleScores {
    /// The share of the four alignment parts right.
    pub fn alignment(&self) -> f64 {
        [self.object, self.colour, self.position, self.count]
            .iter()
            .filter(|&&b| b)
            .count() as f64
            / 4.0
    }
}

/// Every score of one image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImageScores {
    pub pickscore: f64,
    pub aesthetic: f64,
    pub clipscore: f64,
    pub oracle: OracleScores,
}

/// Each image needs its prompt and scene.
fn same_lengths(images: &[RgbImage], prompts: &[&str], scenes: &[Scene]) -> Result<()> {
    if images.len() != prompts.len() || images.len() != scenes.len() {
        return Err(StageError::Failed(format!(
            "{} images, {} prompts and {} scenes: each image needs its prompt and scene",
            images.len(),
            prompts.len(),
            scenes.len()
        ))
        .into());
    }
    Ok(())
}

/// The PickScore analogue of each image with its prompt: `exp(logit_scale)·cos(img, txt)`.
pub fn pickscores(model: &WorldClip, images: &[&RgbImage], prompts: &[&str]) -> Result<Vec<f64>> {
    let scale = model.scale()?;
    Ok(model
        .cosines(images, prompts)?
        .into_iter()
        .map(|c| scale * c)
        .collect())
}

/// torchmetrics' CLIP score of each image with its prompt: `max(100·cos(img, txt), 0)`.
pub fn clipscores(model: &WorldClip, images: &[&RgbImage], prompts: &[&str]) -> Result<Vec<f64>> {
    Ok(model
        .cosines(images, prompts)?
        .into_iter()
        .map(|c| (100.0 * c).max(0.0))
        .collect())
}

/// The detail and alignment oracles on each image against its prompted scene (one parse per
/// image, spread over the available cores).
pub fn oracle_scores(
    atlas: &Atlas,
    scenes: &[Scene],
    images: &[&RgbImage],
) -> Result<Vec<OracleScores>> {
    if scenes.len() != images.len() {
        return Err(StageError::Failed(format!(
            "{} scenes for {} images",
            scenes.len(),
            images.len()
        ))
        .into());
    }
    let judge = |(scene, image): (&Scene, &&RgbImage)| -> Result<OracleScores> {
        let j = spo_world::judge(atlas, scene, image)?;
        let prompted = spo_world::render(atlas, scene)?;
        Ok(OracleScores {
            detail: j.detail.quality,
            grain: spo_world::grain(image)?,
            prompt_rmse: spo_world::oracle::rmse(image, &prompted),
            object: j.alignment.object,
            colour: j.alignment.colour,
            position: j.alignment.position,
            count: j.alignment.count,
        })
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = images.len().div_ceil(threads).max(1);
    let parts: Vec<Result<Vec<OracleScores>>> = std::thread::scope(|s| {
        let handles: Vec<_> = scenes
            .chunks(per)
            .zip(images.chunks(per))
            .map(|(sc, im)| s.spawn(move || sc.iter().zip(im).map(judge).collect()))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(StageError::Failed("an oracle thread panicked".into()).into())
                })
            })
            .collect()
    });
    let mut out = Vec::with_capacity(images.len());
    for p in parts {
        out.extend(p?);
    }
    Ok(out)
}

/// One row of `samples.parquet`.
#[derive(Debug, Clone)]
pub struct SampleRow {
    pub prompt_index: i64,
    pub prompt: String,
    pub scene: Scene,
    pub seed: i64,
    pub image: RgbImage,
}

/// Reads a `samples.parquet` (prompt_index, prompt, scene, seed, image as PNG bytes); errors
/// name the file, the row and the column.
pub fn read_samples(path: &std::path::Path, atlas: &Atlas) -> Result<Vec<SampleRow>> {
    let mut rows = Vec::new();
    let names = ["prompt_index", "prompt", "scene", "seed", "image"];
    each_row(path, &names, |c, i| {
        let bad = |k: usize| {
            StageError::Failed(format!(
                "{}: row {i}: column `{}` is null or of the wrong type",
                path.display(),
                names[k]
            ))
        };
        let code = str_at(c[2], i).ok_or_else(|| bad(2))?;
        let scene = Scene::from_code(atlas, code).map_err(|e| {
            StageError::Failed(format!("{}: row {i}: column `scene`: {e}", path.display()))
        })?;
        let png = bytes_at(c[4], i).ok_or_else(|| bad(4))?;
        let image = image::load_from_memory(png)
            .map(|im| im.to_rgb8())
            .map_err(|e| {
                StageError::Failed(format!(
                    "{}: row {i}: column `image` is not an image: {e}",
                    path.display()
                ))
            })?;
        rows.push(SampleRow {
            prompt_index: i64_at(c[0], i).ok_or_else(|| bad(0))?,
            prompt: str_at(c[1], i).ok_or_else(|| bad(1))?.to_owned(),
            scene,
            seed: i64_at(c[3], i).ok_or_else(|| bad(3))?,
            image,
        });
        Ok(())
    })?;
    Ok(rows)
}

/// The `score` stage kind.
pub struct Score;

impl StageKind for Score {
    fn name(&self) -> &'static str {
        "score"
    }
    fn version(&self) -> u32 {
        // 5: the graded detail oracle and `grain` read a third, coarser high-pass band.
        // 4: GenEval's six categories and their mean (`geneval_*`, Table 3); the other metrics
        //    and scores.parquet are unchanged.
        // 3: the graded detail oracle, `grain` and `prompt_rmse`.
        // 2: CLIP's linear layers and attention are spo-nn's fused CPU ops (last-bit changes).
        5
    }
    fn summary(&self) -> &'static str {
        "Score generated images (an input with samples.parquet) with the in-world PickScore, aesthetic head and CLIP score, and the detail / GenEval-like alignment oracles"
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![]
    }
    fn run(&self, cx: &mut StageContext) -> Result<(), StageError> {
        let device = crate::device::device();
        let samples_input = samples_input(cx)?;
        let scorers = InWorldScorers::load(
            cx.input_of_kind("world")?,
            cx.input_of_kind("pickscore-train")?,
            cx.input_of_kind("aesthetic-train")?,
            &device,
        )?;
        let path = samples_input.file(SAMPLES)?;
        let rows = read_samples(&path, &scorers.atlas)?;
        if rows.is_empty() {
            return Err(StageError::Failed(format!(
                "{}: no images to score",
                path.display()
            )));
        }
        let pb = cx.progress(rows.len() as u64, "score");
        // on the cell's own pool, so the towers' kernels parallelise in place
        let images: Vec<RgbImage> = rows.iter().map(|r| r.image.clone()).collect();
        let prompts: Vec<&str> = rows.iter().map(|r| r.prompt.as_str()).collect();
        let scenes: Vec<Scene> = rows.iter().map(|r| r.scene).collect();
        let scores = crate::inworld::on_cores(cx.threads(), || {
            scorers.score_all(&images, &prompts, &scenes, &pb)
        })?;
        pb.finish_and_clear();
        write_scores(cx, &rows, &scores)?;
        for (name, value) in means(&scores) {
            cx.metric(name, value);
        }
        for (name, value) in geneval(&scores, &scenes) {
            cx.metric(name, value);
        }
        cx.metric("images", rows.len() as f64);
        Ok(())
    }
}

/// The one input with a `samples.parquet`.
fn samples_input(cx: &StageContext) -> Result<Input> {
    let mut with = cx
        .inputs()
        .iter()
        .filter(|i| i.manifest.files.iter().any(|f| f.path == SAMPLES));
    match (with.next(), with.next()) {
        (Some(i), None) => Ok(i.clone()),
        (None, _) => Err(StageError::Input {
            need: SAMPLES.into(),
            message: format!(
                "stage `{}` needs a stage that writes {SAMPLES} (a `sample` stage) among its `needs`",
                cx.stage()
            ),
        }.into()),
        (Some(a), Some(b)) => Err(StageError::Input {
            need: SAMPLES.into(),
            message: format!(
                "ambiguous: both `{}` and `{}` write {SAMPLES}; score each in its own stage",
                a.stage, b.stage
            ),
        }.into()),
    }
}

/// The mean of every column over the images, by metric name.
pub fn means(scores: &[ImageScores]) -> Vec<(&'static str, f64)> {
    let n = scores.len().max(1) as f64;
    let avg = |f: &dyn Fn(&ImageScores) -> f64| scores.iter().map(f).sum::<f64>() / n;
    let share = |f: &dyn Fn(&OracleScores) -> bool| {
        scores.iter().filter(|s| f(&s.oracle)).count() as f64 / n
    };
    vec![
        ("pickscore", avg(&|s| s.pickscore)),
        ("aesthetic", avg(&|s| s.aesthetic)),
        ("clipscore", avg(&|s| s.clipscore)),
        ("detail", avg(&|s| s.oracle.detail)),
        ("detail_sd", {
            let m = avg(&|s| s.oracle.detail);
            (scores
                .iter()
                .map(|s| (s.oracle.detail - m).powi(2))
                .sum::<f64>()
                / (n - 1.0).max(1.0))
            .sqrt()
        }),
        ("grain", avg(&|s| s.oracle.grain)),
        ("prompt_rmse", avg(&|s| s.oracle.prompt_rmse)),
        ("alignment", avg(&|s| s.oracle.alignment())),
        ("geneval_object", share(&|o| o.object)),
        ("geneval_colour", share(&|o| o.colour)),
        ("geneval_position", share(&|o| o.position)),
        ("geneval_count", share(&|o| o.count)),
        (
            "geneval_overall",
            share(&|o| o.object && o.colour && o.position && o.count),
        ),
    ]
}

/// GenEval's categories, each the share of its prompts' images that the alignment oracle finds
/// right in what the category tests, and `geneval_mean` their mean (GenEval's overall); a
/// category no prompt falls in is left out. Single objects: the object; two objects: both;
/// counting (several copies): object and count; colours (a tinted single object): object and
/// colour; position (pairs): objects and relation; attribute binding (pairs with a tint):
/// objects and colours.
pub fn geneval(scores: &[ImageScores], scenes: &[Scene]) -> Vec<(&'static str, f64)> {
    type Test = fn(&Layout, &OracleScores) -> Option<bool>;
    let categories: [(&str, Test); 6] = [
        ("geneval_single_object", |l, o| {
            matches!(l, Layout::Single { count: 1, .. }).then_some(o.object)
        }),
        ("geneval_two_objects", |l, o| {
            matches!(l, Layout::Pair { .. }).then_some(o.object)
        }),
        ("geneval_counting", |l, o| {
            matches!(l, Layout::Single { count, .. } if *count > 1).then_some(o.object && o.count)
        }),
        ("geneval_colours", |l, o| {
            matches!(l, Layout::Single { entity, .. } if entity.tint.is_some())
                .then_some(o.object && o.colour)
        }),
        ("geneval_position", |l, o| {
            matches!(l, Layout::Pair { .. }).then_some(o.object && o.position)
        }),
        ("geneval_attribute_binding", |l, o| {
            matches!(l, Layout::Pair { first, second, .. } if first.tint.is_some() || second.tint.is_some())
                .then_some(o.object && o.colour)
        }),
    ];
    let mut out = Vec::new();
    for (name, test) in categories {
        let results: Vec<bool> = scores
            .iter()
            .zip(scenes)
            .filter_map(|(s, scene)| test(&scene.layout, &s.oracle))
            .collect();
        if !results.is_empty() {
            let right = results.iter().filter(|r| **r).count();
            out.push((name, right as f64 / results.len() as f64));
        }
    }
    if !out.is_empty() {
        let mean = out.iter().map(|(_, v)| v).sum::<f64>() / out.len() as f64;
        out.push(("geneval_mean", mean));
    }
    out
}

fn write_scores(cx: &mut StageContext, rows: &[SampleRow], scores: &[ImageScores]) -> Result<()> {
    let f = |name: &str| Field::new(name, DataType::Float64, false);
    let b = |name: &str| Field::new(name, DataType::Boolean, false);
    let schema = Arc::new(Schema::new(vec![
        Field::new("prompt_index", DataType::Int64, false),
        Field::new("prompt", DataType::Utf8, false),
        Field::new("seed", DataType::Int64, false),
        f("pickscore"),
        f("aesthetic"),
        f("clipscore"),
        f("detail"),
        f("grain"),
        f("prompt_rmse"),
        b("object"),
        b("colour"),
        b("position"),
        b("count"),
        f("alignment"),
    ]));
    let floats =
        |g: &dyn Fn(&ImageScores) -> f64| col(Float64Array::from_iter_values(scores.iter().map(g)));
    let bools = |g: &dyn Fn(&OracleScores) -> bool| {
        col(BooleanArray::from_iter(
            scores.iter().map(|s| Some(g(&s.oracle))),
        ))
    };
    let columns = vec![
        col(Int64Array::from_iter_values(
            rows.iter().map(|r| r.prompt_index),
        )),
        col(StringArray::from_iter_values(
            rows.iter().map(|r| r.prompt.as_str()),
        )),
        col(Int64Array::from_iter_values(rows.iter().map(|r| r.seed))),
        floats(&|s| s.pickscore),
        floats(&|s| s.aesthetic),
        floats(&|s| s.clipscore),
        floats(&|s| s.oracle.detail),
        floats(&|s| s.oracle.grain),
        floats(&|s| s.oracle.prompt_rmse),
        bools(&|o| o.object),
        bools(&|o| o.colour),
        bools(&|o| o.position),
        bools(&|o| o.count),
        floats(&|s| s.oracle.alignment()),
    ];
    write_table(cx, "scores.parquet", schema, columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use spo_world::{Colour, Entity, Position, Relation};

    fn scored(object: bool, colour: bool, position: bool, count: bool) -> ImageScores {
        ImageScores {
            pickscore: 0.0,
            aesthetic: 0.0,
            clipscore: 0.0,
            oracle: OracleScores {
                detail: 0.5,
                grain: 0.0,
                prompt_rmse: 0.0,
                object,
                colour,
                position,
                count,
            },
        }
    }

    fn single(count: u8, tint: Option<Colour>) -> Scene {
        Scene {
            background: Colour::Red,
            layout: Layout::Single {
                entity: Entity { object: 0, tint },
                position: Position::Center,
                count,
            },
        }
    }

    fn pair(tint: Option<Colour>) -> Scene {
        Scene {
            background: Colour::Red,
            layout: Layout::Pair {
                first: Entity { object: 0, tint },
                second: Entity {
                    object: 1,
                    tint: None,
                },
                relation: Relation::LeftOf,
            },
        }
    }

    #[test]
    fn each_geneval_category_reads_its_prompts_and_its_parts() {
        let images = [
            (single(1, None), scored(true, false, false, false)),
            (single(1, None), scored(false, true, true, true)),
            (single(3, None), scored(true, true, true, false)),
            (
                single(1, Some(Colour::Blue)),
                scored(true, true, false, true),
            ),
            (pair(None), scored(true, false, true, true)),
            (pair(Some(Colour::Blue)), scored(true, false, false, true)),
        ];
        let (scenes, scores): (Vec<Scene>, Vec<ImageScores>) = images.into_iter().unzip();
        let got: BTreeMap<&str, f64> = geneval(&scores, &scenes).into_iter().collect();
        // Single objects: three prompts (one tinted), two with the object right.
        assert_eq!(got["geneval_single_object"], 2.0 / 3.0);
        assert_eq!(got["geneval_two_objects"], 1.0);
        assert_eq!(got["geneval_counting"], 0.0, "three copies, count wrong");
        assert_eq!(got["geneval_colours"], 1.0);
        assert_eq!(got["geneval_position"], 0.5);
        assert_eq!(got["geneval_attribute_binding"], 0.0);
        let mean = (2.0 / 3.0 + 1.0 + 0.0 + 1.0 + 0.5 + 0.0) / 6.0;
        assert!((got["geneval_mean"] - mean).abs() < 1e-15);
        // A category with no prompt is left out, not reported as 0.
        let only_pairs = geneval(&scores[4..], &scenes[4..]);
        assert!(
            only_pairs
                .iter()
                .all(|(n, _)| !n.contains("single") && !n.contains("counting"))
        );
    }
}
