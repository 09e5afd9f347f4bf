//! The image scorers behind `spo-pipe score` and the pipeline's score stage.
//!
//! | metric | model | per-image score |
//! |---|---|---|
//! | `pickscore` | HF CLIP ViT-H/14 (PickScore_v1) | `exp(logit_scale)·cos(img, txt)` |
//! | `hpsv2` | OpenCLIP ViT-H/14 (HPS v2.0 / v2.1 weights) | `100·cos(img, txt)` (the benchmark tables' scale; `hpsv2.score()` returns the cosine) |
//! | `imagereward` | BLIP ViT-L/16 → BERT with cross-attention → MLP | `(mlp(cls) − 0.16717362830052426) / 1.0333394966054072` |
//! | `aesthetic` | OpenAI CLIP ViT-L/14 image tower → LAION MLP head | `head(img / ‖img‖)` |
//! | `clipscore` | HF CLIP (default openai/clip-vit-large-patch14) | `max(100·cos(img, txt), 0)` (torchmetrics) |
//!
//! Cosines, norms and heads are computed in f64 from the f32 embeddings. Images go through each
//! reference's own preprocessing ([`Preprocess`]); prompts through its tokenizer.
//!
//! Usage: `Scorer::load(metric, path, &ScoreOptions::default(), &device)?.score(&images,
//! &prompts)?` → one score per image, image `i` paired with prompt `i`.

pub mod aesthetic;

use std::path::{Path, PathBuf};
use std::str::FromStr;

use candle_core::{Device, Tensor};
use image::RgbImage;

use crate::config::ClipConfig;
use crate::error::ClipError;
use crate::image_reward::{BertTokenizer, ImageReward};
use crate::memory::{self, ScorerMemory};
use crate::model::{ClipModel, load_hf_clip, load_open_clip};
use crate::preprocess::{Preprocess, load_rgb};
use crate::tokenizer::{ClipTokenizer, TextCleaning};
use aesthetic::MlpHead;

/// A published image metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    /// PickScore (Kirstain et al. 2023).
    PickScore,
    /// HPSv2 (v2.0 or v2.1, by weights file).
    HpsV2,
    /// ImageReward v1.0.
    ImageReward,
    /// LAION aesthetic predictor v2.
    Aesthetic,
    /// CLIP score (torchmetrics' definition).
    ClipScore,
}

impl Metric {
    /// Every metric.
    pub const ALL: [Metric; 5] = [
        Metric::PickScore,
        Metric::HpsV2,
        Metric::ImageReward,
        Metric::Aesthetic,
        Metric::ClipScore,
    ];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Self::PickScore => "pickscore",
            Self::HpsV2 => "hpsv2",
            Self::ImageReward => "imagereward",
            Self::Aesthetic => "aesthetic",
            Self::ClipScore => "clipscore",
        }
    }

    /// Whether the score depends on the prompt.
    pub fn needs_prompts(self) -> bool {
        !matches!(self, Self::Aesthetic)
    }
}

impl std::fmt::Display for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Metric {
    type Err = ClipError;
    fn from_str(s: &str) -> Result<Self, ClipError> {
        Self::ALL
            .into_iter()
            .find(|m| m.name() == s.to_ascii_lowercase())
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|m| m.name()).collect();
                ClipError::Input(format!(
                    "unknown metric `{s}` (known: {})",
                    names.join(", ")
                ))
            })
    }
}

/// Knobs of a scoring run.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreOptions {
    /// Images per forward pass (memory against throughput); 16.
    pub batch_size: usize,
    /// HPSv2's letterbox resize antialiasing: torchvision ≥ 0.17 antialiases (`true`, default),
    /// older versions did not.
    pub hps_antialias: bool,
}

impl Default for ScoreOptions {
    fn default() -> Self {
        Self {
            batch_size: 16,
            hps_antialias: true,
        }
    }
}

enum Kind {
    /// A CLIP dual encoder and how its cosine becomes the score.
    Clip {
        model: Box<ClipModel>,
        tokenizer: Box<ClipTokenizer>,
    },
    /// ImageReward and its BERT tokenizer.
    ImageReward {
        model: Box<ImageReward>,
        tokenizer: Box<BertTokenizer>,
    },
    /// A CLIP image tower and the LAION head.
    Aesthetic {
        model: Box<ClipModel>,
        head: MlpHead,
    },
}

/// A loaded scorer. Build with [`Scorer::load`] (released files) or the `from_*` constructors
/// (in-memory models, e.g. ones the pipeline trained).
pub struct Scorer {
    metric: Metric,
    kind: Kind,
    preprocess: Preprocess,
    options: ScoreOptions,
    device: Device,
}

/// HPSv2's architecture: a `config.json` (HF layout) beside the checkpoint, else ViT-H/14.
fn hps_config(weights: &Path) -> Result<ClipConfig, ClipError> {
    let sibling = weights.with_file_name("config.json");
    if sibling.is_file() {
        ClipConfig::from_file(&sibling)
    } else {
        Ok(ClipConfig::vit_h_14())
    }
}

/// The file in `dir` named like one of `candidates`.
fn find_file(dir: &Path, candidates: &[&str]) -> Result<PathBuf, ClipError> {
    candidates
        .iter()
        .map(|c| dir.join(c))
        .find(|p| p.is_file())
        .ok_or_else(|| ClipError::MissingFile {
            dir: dir.to_path_buf(),
            candidates: candidates.iter().map(|s| s.to_string()).collect(),
        })
}

/// Names the aesthetic head may have inside an aesthetic weights folder.
pub const AESTHETIC_HEAD_FILES: [&str; 3] = [
    "sac+logos+ava1-l14-linearMSE.pth",
    "aesthetic_head.safetensors",
    "aesthetic_head.pth",
];

impl Scorer {
    /// Loads a scorer from its released files:
    /// - `pickscore`, `clipscore`: an HF CLIP folder (`config.json` + `model.safetensors` or
    ///   `pytorch_model.bin`);
    /// - `hpsv2`: the OpenCLIP checkpoint file (`HPS_v2_compressed.pt`, `HPS_v2.1_compressed.pt`,
    ///   or a safetensors file in OpenCLIP naming); a `config.json` (HF layout) beside it
    ///   overrides the default ViT-H/14 architecture;
    /// - `aesthetic`: a folder with the HF CLIP ViT-L/14 files and the head
    ///   ([`AESTHETIC_HEAD_FILES`]);
    /// - `imagereward`: a folder with `ImageReward.pt` and `med_config.json`.
    pub fn load(
        metric: Metric,
        weights: &Path,
        options: &ScoreOptions,
        device: &Device,
    ) -> Result<Self, ClipError> {
        match metric {
            Metric::PickScore | Metric::ClipScore => {
                let model = load_hf_clip(weights, device)?;
                Self::from_clip(metric, model, options, device)
            }
            Metric::HpsV2 => {
                let model = load_open_clip(weights, &hps_config(weights)?, device)?;
                Self::from_clip(metric, model, options, device)
            }
            Metric::Aesthetic => {
                let model = load_hf_clip(weights, device)?;
                let head_path = find_file(weights, &AESTHETIC_HEAD_FILES)?;
                let head = MlpHead::load(&head_path, model.config().projection_dim)?;
                Ok(Self::from_aesthetic(model, head, options, device))
            }
            Metric::ImageReward => Ok(Self::from_image_reward(
                ImageReward::load_dir(weights, device)?,
                options,
                device,
            )?),
        }
    }

    /// What [`Scorer::load`] of the same files needs on its device to score batches of
    /// `batch` images, from their configs alone ([`crate::memory`]).
    pub fn memory(metric: Metric, weights: &Path, batch: usize) -> Result<ScorerMemory, ClipError> {
        Ok(match metric {
            Metric::PickScore | Metric::ClipScore | Metric::Aesthetic => {
                memory::clip(&ClipConfig::from_file(&weights.join("config.json"))?, batch)
            }
            Metric::HpsV2 => memory::clip(&hps_config(weights)?, batch),
            Metric::ImageReward => {
                let (vision, med) = ImageReward::configs(weights)?;
                memory::image_reward(&vision, &med, batch)
            }
        })
    }

    /// A prompt-conditioned CLIP metric (`pickscore`, `hpsv2`, `clipscore`) on `model`.
    pub fn from_clip(
        metric: Metric,
        model: ClipModel,
        options: &ScoreOptions,
        device: &Device,
    ) -> Result<Self, ClipError> {
        let (cleaning, preprocess) = match metric {
            Metric::PickScore | Metric::ClipScore => (TextCleaning::Hf, Preprocess::HF_CLIP),
            Metric::HpsV2 => (
                TextCleaning::OpenClip,
                Preprocess::Letterbox {
                    size: model.config().vision_config.image_size as u32,
                    antialias: options.hps_antialias,
                },
            ),
            other => {
                return Err(ClipError::Input(format!(
                    "`{other}` is not a CLIP-cosine metric"
                )));
            }
        };
        Ok(Self {
            metric,
            kind: Kind::Clip {
                model: Box::new(model),
                tokenizer: Box::new(ClipTokenizer::new(cleaning)?),
            },
            preprocess,
            options: options.clone(),
            device: device.clone(),
        })
    }

    /// The aesthetic metric from a CLIP model (its image tower and projection) and the head.
    pub fn from_aesthetic(
        model: ClipModel,
        head: MlpHead,
        options: &ScoreOptions,
        device: &Device,
    ) -> Self {
        Self {
            metric: Metric::Aesthetic,
            kind: Kind::Aesthetic {
                model: Box::new(model),
                head,
            },
            preprocess: Preprocess::HF_CLIP,
            options: options.clone(),
            device: device.clone(),
        }
    }

    /// The ImageReward metric from a loaded model.
    pub fn from_image_reward(
        model: ImageReward,
        options: &ScoreOptions,
        device: &Device,
    ) -> Result<Self, ClipError> {
        Ok(Self {
            metric: Metric::ImageReward,
            kind: Kind::ImageReward {
                model: Box::new(model),
                tokenizer: Box::new(BertTokenizer::new()?),
            },
            preprocess: Preprocess::TORCHVISION,
            options: options.clone(),
            device: device.clone(),
        })
    }

    /// The metric this scorer computes.
    pub fn metric(&self) -> Metric {
        self.metric
    }

    /// The image preprocessing it applies.
    pub fn preprocess(&self) -> Preprocess {
        self.preprocess
    }

    /// One score per image; `prompts[i]` belongs to `images[i]` (ignored, and may be empty, for
    /// `aesthetic`). Images are processed `batch_size` at a time.
    pub fn score(&self, images: &[RgbImage], prompts: &[&str]) -> Result<Vec<f64>, ClipError> {
        if self.metric.needs_prompts() && prompts.len() != images.len() {
            return Err(ClipError::Input(format!(
                "{} images but {} prompts (`{}` pairs each image with its prompt)",
                images.len(),
                prompts.len(),
                self.metric
            )));
        }
        let batch = self.options.batch_size.max(1);
        let mut scores = Vec::with_capacity(images.len());
        for (start, chunk) in images
            .chunks(batch)
            .enumerate()
            .map(|(i, c)| (i * batch, c))
        {
            let refs: Vec<&RgbImage> = chunk.iter().collect();
            let pixels = self.preprocess.batch(&refs, &self.device)?;
            let chunk_prompts = if self.metric.needs_prompts() {
                &prompts[start..start + chunk.len()]
            } else {
                &[][..]
            };
            scores.extend(self.score_pixels(&pixels, chunk_prompts)?);
        }
        Ok(scores)
    }

    /// Scores image files (PNG or JPEG), decoding `batch_size` at a time so memory stays
    /// bounded by one batch; `prompts` as in [`score`](Self::score).
    pub fn score_files(&self, paths: &[PathBuf], prompts: &[&str]) -> Result<Vec<f64>, ClipError> {
        if self.metric.needs_prompts() && prompts.len() != paths.len() {
            return Err(ClipError::Input(format!(
                "{} images but {} prompts (`{}` pairs each image with its prompt)",
                paths.len(),
                prompts.len(),
                self.metric
            )));
        }
        let batch = self.options.batch_size.max(1);
        let mut scores = Vec::with_capacity(paths.len());
        for (i, chunk) in paths.chunks(batch).enumerate() {
            let images = chunk
                .iter()
                .map(|p| load_rgb(p))
                .collect::<Result<Vec<_>, _>>()?;
            let chunk_prompts = if self.metric.needs_prompts() {
                &prompts[i * batch..i * batch + chunk.len()]
            } else {
                &[][..]
            };
            scores.extend(self.score(&images, chunk_prompts)?);
        }
        Ok(scores)
    }

    /// Scores already-preprocessed `(b, 3, s, s)` pixels (e.g. decoded samples kept on the
    /// device); `prompts` as in [`score`](Self::score).
    pub fn score_pixels(&self, pixels: &Tensor, prompts: &[&str]) -> Result<Vec<f64>, ClipError> {
        match &self.kind {
            Kind::Clip { model, tokenizer } => {
                // Each distinct prompt is encoded once (SPO-style evaluations score k images
                // per prompt).
                let mut unique: Vec<&str> = Vec::new();
                let row_of: Vec<usize> = prompts
                    .iter()
                    .map(|p| match unique.iter().position(|u| u == p) {
                        Some(i) => i,
                        None => {
                            unique.push(p);
                            unique.len() - 1
                        }
                    })
                    .collect();
                let ids = tokenizer.encode_batch(&unique, &self.device)?;
                let img = rows_f64(&model.get_image_features(pixels)?)?;
                let unique_txt = rows_f64(&model.get_text_features(&ids)?)?;
                let txt: Vec<&Vec<f64>> = row_of.iter().map(|&r| &unique_txt[r]).collect();
                let scale = f64::from(
                    model
                        .logit_scale()
                        .to_dtype(candle_core::DType::F32)?
                        .to_scalar::<f32>()?,
                )
                .exp();
                Ok(img
                    .iter()
                    .zip(txt)
                    .map(|(i, t)| {
                        let cos = cosine(i, t);
                        match self.metric {
                            Metric::PickScore => scale * cos,
                            Metric::HpsV2 => 100.0 * cos,
                            _ => (100.0 * cos).max(0.0),
                        }
                    })
                    .collect())
            }
            Kind::ImageReward { model, tokenizer } => {
                let (ids, mask) = tokenizer.encode_batch(prompts, &self.device)?;
                model.score(pixels, &ids, &mask)
            }
            Kind::Aesthetic { model, head } => {
                let img = rows_f64(&model.get_image_features(pixels)?)?;
                Ok(img.iter().map(|e| head.apply(&normalized(e))).collect())
            }
        }
    }
}

/// `(b, d)` tensor → rows of f64.
fn rows_f64(t: &Tensor) -> Result<Vec<Vec<f64>>, ClipError> {
    Ok(t.to_dtype(candle_core::DType::F64)?.to_vec2::<f64>()?)
}

/// `x / ‖x‖₂` in f64.
pub fn normalized(x: &[f64]) -> Vec<f64> {
    let norm = x.iter().map(|v| v * v).sum::<f64>().sqrt();
    x.iter().map(|v| v / norm).collect()
}

/// Cosine similarity in f64.
pub fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|v| v * v).sum::<f64>().sqrt();
    let nb = b.iter().map(|v| v * v).sum::<f64>().sqrt();
    dot / (na * nb)
}
