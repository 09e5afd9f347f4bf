//! `sd-score`: one of the paper's real scorers (PickScore, HPSv2, ImageReward, the LAION
//! aesthetic predictor, CLIP score) on the images of an `sd-sample` cell, with the scorer's
//! released weights from `hub` (or `download`) cells. Writes `scores.parquet` (prompt_index,
//! seed, score) and the mean and standard deviation as metrics `<metric>` and `<metric>_std`.
//!
//! Weights: the one other input's folder (PickScore, CLIP score: an HF CLIP repo; ImageReward:
//! `ImageReward.pt` + `med_config.json`), or the file `file` in it (HPSv2's
//! `HPS_v2_compressed.pt`); the aesthetic predictor takes an HF CLIP ViT-L/14 folder and its
//! head (`sac+logos+ava1-l14-linearMSE.pth`) from another input.

use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::{Float64Array, Int64Array};
use arrow_schema::{DataType, Field, Schema};
use spo_clip::scorers::AESTHETIC_HEAD_FILES;
use spo_clip::scorers::aesthetic::MlpHead;
use spo_clip::{Metric, ScoreOptions, Scorer, load_hf_clip};
use spo_core::{Input, ParamSpec, StageContext, StageError, StageKind};
use spo_sd::memory::MemoryNeed;

use crate::device::device;
use crate::error::{At, Result};
use crate::inworld::on_cores;
use crate::real::check_need;
use crate::sd_sample::read_sd_samples;
use crate::world_parquet::{col, write_table};

spo_core::param_choice! {
    /// The scorers.
    pub enum RealMetric {
        PickScore = "pickscore",
        HpsV2 = "hpsv2",
        ImageReward = "imagereward",
        Aesthetic = "aesthetic",
        ClipScore = "clipscore",
    }
}

impl RealMetric {
    fn metric(self) -> Metric {
        match self {
            RealMetric::PickScore => Metric::PickScore,
            RealMetric::HpsV2 => Metric::HpsV2,
            RealMetric::ImageReward => Metric::ImageReward,
            RealMetric::Aesthetic => Metric::Aesthetic,
            RealMetric::ClipScore => Metric::ClipScore,
        }
    }
}

spo_core::stage_params! {
    /// The params of `sd-score`.
    pub struct SdScoreParams {
        /// the scorer
        metric: RealMetric = choice_of(RealMetric::PickScore).required(),
        /// the checkpoint file in the weights input (HPSv2: e.g. HPS_v2_compressed.pt); empty: its folder
        file: String = string(""),
        /// images per forward pass
        batch: usize = int(16).range(1.0, 4096.0),
    }
}

/// The `sd-score` stage kind.
pub struct SdScore;

impl StageKind for SdScore {
    fn name(&self) -> &'static str {
        "sd-score"
    }
    fn version(&self) -> u32 {
        // 2: records `memory_estimate_gib` and is refused up front when it does not fit.
        2
    }
    fn summary(&self) -> &'static str {
        "a real scorer (pickscore, hpsv2, imagereward, aesthetic, clipscore) on an sd-sample cell's images, weights from hub cells"
    }
    fn params(&self) -> Vec<ParamSpec> {
        SdScoreParams::specs()
    }
    fn run(&self, cx: &mut StageContext) -> Result<(), StageError> {
        Ok(run(cx)?)
    }
}

fn input_error(need: &str, message: String) -> crate::error::Error {
    StageError::Input {
        need: need.into(),
        message,
    }
    .into()
}

/// Where the scorer `p` asks for finds its weights among the inputs other than the samples.
enum Source {
    /// An HF CLIP ViT-L/14 folder and the head's file.
    Aesthetic { clip: PathBuf, head: PathBuf },
    /// The folder (or, with `file`, the file) the scorer loads.
    Weights(PathBuf),
}

impl Source {
    fn of(p: &SdScoreParams, weights: &[&Input]) -> Result<Source> {
        let name = p.metric.as_str();
        if p.metric == RealMetric::Aesthetic {
            let clip = weights
                .iter()
                .find(|i| i.file("config.json").is_ok())
                .ok_or_else(|| input_error(name, "the aesthetic predictor needs an HF CLIP ViT-L/14 folder (config.json) among the needs".into()))?;
            let names: Vec<&str> = if p.file.is_empty() {
                AESTHETIC_HEAD_FILES.to_vec()
            } else {
                vec![p.file.as_str()]
            };
            let head: PathBuf = weights
                .iter()
                .find_map(|i| names.iter().find_map(|f| i.file(f).ok()))
                .ok_or_else(|| {
                    input_error(
                        name,
                        format!(
                            "no aesthetic head among the needs (a file named {})",
                            names.join(" or ")
                        ),
                    )
                })?;
            return Ok(Source::Aesthetic {
                clip: clip.dir.clone(),
                head,
            });
        }
        let [input] = weights else {
            return Err(input_error(
                name,
                format!(
                    "`{name}` takes its weights from one input besides the samples; got {}",
                    weights.len()
                ),
            ));
        };
        Ok(Source::Weights(if p.file.is_empty() {
            input.dir.clone()
        } else {
            input.file(&p.file)?
        }))
    }

    /// What the scorer needs on the device for batches of `p.batch` images, as
    /// [`MemoryNeed`] (nothing trains: no training state).
    fn memory(&self, p: &SdScoreParams) -> Result<MemoryNeed> {
        let (metric, path) = match self {
            Source::Aesthetic { clip, .. } => (Metric::Aesthetic, clip),
            Source::Weights(path) => (p.metric.metric(), path),
        };
        let m = Scorer::memory(metric, path, p.batch).at(path)?;
        Ok(MemoryNeed {
            weights: m.weights,
            training_state: 0,
            activations: m.activations,
        })
    }

    /// Loads the scorer.
    fn load(&self, p: &SdScoreParams, options: &ScoreOptions) -> Result<Scorer> {
        let dev = device();
        match self {
            Source::Aesthetic { clip, head } => {
                let model = load_hf_clip(clip, &dev).at(clip)?;
                let head_net = MlpHead::load(head, model.config().projection_dim).at(head)?;
                Ok(Scorer::from_aesthetic(model, head_net, options, &dev))
            }
            Source::Weights(path) => Scorer::load(p.metric.metric(), path, options, &dev).at(path),
        }
    }
}

fn run(cx: &mut StageContext) -> Result<()> {
    let p = SdScoreParams::from_params(cx.params())?;
    let samples = cx.input_of_kind("sd-sample")?;
    let samples_path = samples.file("samples.parquet")?;
    let weights: Vec<&Input> = cx
        .inputs()
        .iter()
        .filter(|i| i.kind != "sd-sample")
        .collect();
    let options = ScoreOptions {
        batch_size: p.batch,
        ..Default::default()
    };
    let source = Source::of(&p, &weights)?;
    // Refused here, before a weight is read, if the device cannot hold it.
    check_need(
        cx,
        &source.memory(&p)?,
        "lower the batch param or give it a larger device",
    )?;
    let scorer = source.load(&p, &options)?;
    let rows = read_sd_samples(&samples_path)?;
    let pb = cx.progress(rows.len() as u64, p.metric.as_str());
    let mut scores = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(p.batch) {
        let images: Vec<_> = chunk.iter().map(|r| r.image.clone()).collect();
        let prompts: Vec<&str> = chunk.iter().map(|r| r.prompt.as_str()).collect();
        scores.extend(on_cores(cx.threads(), || {
            Ok(scorer.score(&images, &prompts)?)
        })?);
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
        return Err(StageError::Failed(format!(
            "{}: the score of row {i} is {} (not finite): the weights or the image are broken",
            p.metric.as_str(),
            scores[i]
        ))
        .into());
    }
    let summary = spo_core::stats::summarize(&scores);
    let schema = Arc::new(Schema::new(vec![
        Field::new("prompt_index", DataType::Int64, false),
        Field::new("seed", DataType::Int64, false),
        Field::new("score", DataType::Float64, false),
    ]));
    let cols = vec![
        col(Int64Array::from_iter_values(
            rows.iter().map(|r| r.prompt_index),
        )),
        col(Int64Array::from_iter_values(rows.iter().map(|r| r.seed))),
        col(Float64Array::from(scores)),
    ];
    write_table(cx, "scores.parquet", schema, cols)?;
    if let Some(summary) = summary {
        cx.metric(p.metric.as_str(), summary.mean);
        cx.metric(&format!("{}_std", p.metric.as_str()), summary.std);
    }
    Ok(())
}
