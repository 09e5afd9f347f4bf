//! The in-world CLIP and the PickScore analogue: the `clip-pretrain` and `pickscore-train` stage
//! kinds, and [`WorldClip`], the loaded model that the aesthetic head, the score stage, the SPM
//! stage and the `spo-pipe score` command share.
//!
//! * `clip-pretrain` trains a tiny CLIP (spo-clip's [`ClipModel`], HF naming) from scratch with
//!   CLIP's symmetric InfoNCE loss and a trainable `logit_scale`, on clean renders of the world's
//!   training prompts; the text tower reads the word-level [`Vocab`] of the world's prompts
//!   (plus the quality words of [`quality_phrase`]). With `flawed_share` > 0 a share of the
//!   batch's scenes is also drawn with a detail flaw and captioned with it named, as hard
//!   negatives (off by default: see docs/in-world-scorers.md for what it did to the aesthetic
//!   head).
//! * `pickscore-train` fine-tunes that CLIP on the generic preference pairs with PickScore's
//!   loss (spo-reference.md §3.3, `in_batch_negatives=False`): per pair, a softmax over the two
//!   images' scores `exp(logit_scale)·cos(img, txt)`, cross-entropy against `(label_0, label_1)`
//!   (ties 0.5/0.5, plus `log 0.5` so the optimum is 0), pairs weighted by
//!   `1/num_example_per_prompt`.
//!
//! Both write the same three files, so either loads with [`WorldClip::load`]:
//! `clip.safetensors` (every variable, HF CLIP names), `clip_config.json` (a serde
//! [`ClipConfig`], HF `config.json` fields) and `vocab.json` (the [`Vocab`]). The SPM stage
//! builds on the PickScore analogue exactly as SPO builds on PickScore_v1:
//! `spo_clip::init_spm_from_pickscore(&clip.varmap, clip.model.config(), seed, &device)` on a
//! loaded [`WorldClip`] (its var map holds the parent's variables under their HF names).
//!
//! Pixels are the world's canvas as `(b, 3, s, s)` in [-1, 1] ([`crate::tensors`]), the
//! `Normalize(0.5, 0.5)` range SPO's SPM training uses; there is no resize, the towers are
//! built for the canvas size.

use std::path::Path;

use candle_core::{D, DType, Device, Tensor};
use candle_nn::VarMap;
use image::RgbImage;
use spo_clip::{ClipConfig, ClipModel, ClipTextConfig, ClipVisionConfig, l2_normalize};
use spo_core::{FromParam, Input, ParamSpec, Params, StageContext, StageError, StageKind};
use spo_nn::{Activation, AdamW, AdamWConfig, named_vars, seeded_var_builder};
use spo_world::{Flaw, FlawKind};

use crate::embedded::Weights;
use crate::error::{At, Result};
use crate::tensors::images_to_tensor;
use crate::training::Trainer;
use crate::vocab::Vocab;
use crate::worlddata::{Pair, WorldData, load_pairs};

/// The weights file of a trained in-world CLIP.
pub const CLIP_WEIGHTS: &str = "clip.safetensors";
/// Its architecture (a serde [`ClipConfig`]).
pub const CLIP_CONFIG: &str = "clip_config.json";
/// Its word vocabulary.
pub const CLIP_VOCAB: &str = "vocab.json";

/// Images or prompts per forward pass when embedding for evaluation or scoring.
pub(crate) const EVAL_BATCH: usize = 128;

/// An in-world CLIP with its vocabulary, its variables in a [`VarMap`] (HF names) so that it
/// can be fine-tuned or extended (the SPM) in place.
pub struct WorldClip {
    pub model: ClipModel,
    pub vocab: Vocab,
    pub varmap: VarMap,
}

impl WorldClip {
    /// A new model for `vocab` and square images of side `canvas`, its weights drawn from `seed`.
    pub fn new(
        arch: &TinyClip,
        vocab: Vocab,
        canvas: usize,
        seed: u64,
        device: &Device,
    ) -> Result<WorldClip> {
        let config = arch.config(&vocab, canvas);
        config.validate().map_err(|m| {
            StageError::Failed(format!("the CLIP architecture is not buildable: {m}"))
        })?;
        let varmap = VarMap::new();
        let vb = seeded_var_builder(&varmap, seed, DType::F32, device);
        let model = ClipModel::new(&config, vb)?;
        Ok(WorldClip {
            model,
            vocab,
            varmap,
        })
    }

    /// Loads the three files ([`CLIP_WEIGHTS`], [`CLIP_CONFIG`], [`CLIP_VOCAB`]) of an input
    /// (a `clip-pretrain`, `pickscore-train` or `aesthetic-train` cell).
    pub fn load(input: &Input, device: &Device) -> Result<WorldClip> {
        Self::load_files(
            &input.file(CLIP_CONFIG)?,
            &input.file(CLIP_VOCAB)?,
            &input.file(CLIP_WEIGHTS)?,
            device,
        )
    }

    /// Loads the three files from a directory (a committed cell's, for `spo-pipe score`).
    pub fn load_dir(dir: &Path, device: &Device) -> Result<WorldClip> {
        Self::load_files(
            &dir.join(CLIP_CONFIG),
            &dir.join(CLIP_VOCAB),
            &dir.join(CLIP_WEIGHTS),
            device,
        )
    }

    fn load_files(
        config: &Path,
        vocab: &Path,
        weights: &Path,
        device: &Device,
    ) -> Result<WorldClip> {
        let config = ClipConfig::from_file(config)?;
        let bytes = std::fs::read(vocab).map_err(|e| StageError::io(vocab, e))?;
        let vocab_data = Vocab::from_json(&bytes, vocab)?;
        if config.text_config.vocab_size != vocab_data.size()
            || config.text_config.eos_token_id != vocab_data.eos()
        {
            return Err(StageError::Failed(format!(
                "{}: {} words (end of text {}) but the text tower has vocab_size {} (end of text {})",
                vocab.display(),
                vocab_data.size(),
                vocab_data.eos(),
                config.text_config.vocab_size,
                config.text_config.eos_token_id
            )).into());
        }
        let mut varmap = VarMap::new();
        // Every variable is overwritten by the file; the seed only avoids candle's thread RNG.
        let vb = seeded_var_builder(&varmap, 0, DType::F32, device);
        let model = ClipModel::new(&config, vb)?;
        if !weights.is_file() {
            return Err(StageError::io(
                weights,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            )
            .into());
        }
        varmap.load(weights).at(weights)?;
        Ok(WorldClip {
            model,
            vocab: vocab_data,
            varmap,
        })
    }

    /// Writes the three files into the cell's output.
    pub fn write(&self, cx: &mut StageContext) -> Result<()> {
        let tmp = cx.scratch_dir().join("export");
        std::fs::create_dir_all(&tmp).map_err(|e| StageError::io(&tmp, e))?;
        let path = tmp.join(CLIP_WEIGHTS);
        self.varmap.save(&path)?;
        let bytes = std::fs::read(&path).map_err(|e| StageError::io(&path, e))?;
        cx.write_artifact(CLIP_WEIGHTS, &bytes)?;
        let config = serde_json::to_vec_pretty(self.model.config())?;
        cx.write_artifact(CLIP_CONFIG, &config)?;
        Ok(cx.write_artifact(CLIP_VOCAB, &self.vocab.to_json())?)
    }

    /// Side of the square images the vision tower takes.
    pub fn image_size(&self) -> usize {
        self.model.config().vision_config.image_size
    }

    /// `(b, projection_dim)` L2-normalised image embeddings, `EVAL_BATCH` images at a time,
    /// detached (for evaluation and frozen-backbone features: no gradient flows back).
    pub fn image_embeddings(&self, images: &[&RgbImage]) -> Result<Tensor> {
        let side = self.image_size() as u32;
        if let Some((i, im)) = images
            .iter()
            .enumerate()
            .find(|(_, im)| im.dimensions() != (side, side))
        {
            return Err(StageError::Failed(format!(
                "image {i} is {}x{}, but this CLIP takes {side}x{side} images (the world's canvas)",
                im.width(),
                im.height()
            ))
            .into());
        }
        let device = self.model.logit_scale().device();
        let mut parts = Vec::new();
        for chunk in images.chunks(EVAL_BATCH) {
            let pixels = images_to_tensor(chunk, device)?;
            let f = self
                .model
                .get_image_features(&pixels)
                .and_then(|f| l2_normalize(&f))?;
            parts.push(f.detach());
        }
        cat_rows(&parts)
    }

    /// `(b, projection_dim)` L2-normalised text embeddings, `EVAL_BATCH` prompts at a time,
    /// detached.
    pub fn text_embeddings(&self, prompts: &[&str]) -> Result<Tensor> {
        let device = self.model.logit_scale().device();
        let mut parts = Vec::new();
        for chunk in prompts.chunks(EVAL_BATCH) {
            let ids = self.vocab.batch(chunk, device)?;
            let f = self
                .model
                .get_text_features(&ids)
                .and_then(|f| l2_normalize(&f))?;
            parts.push(f.detach());
        }
        cat_rows(&parts)
    }

    /// `cos(img_i, txt_i)` for each image and its prompt, in f64.
    pub fn cosines(&self, images: &[&RgbImage], prompts: &[&str]) -> Result<Vec<f64>> {
        if images.len() != prompts.len() {
            return Err(StageError::Failed(format!(
                "{} images but {} prompts",
                images.len(),
                prompts.len()
            ))
            .into());
        }
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let img = rows_f64(&self.image_embeddings(images)?)?;
        let txt = rows_f64(&self.text_embeddings(prompts)?)?;
        Ok(img.iter().zip(&txt).map(|(a, b)| cosine(a, b)).collect())
    }

    /// `exp(logit_scale)`, the factor that turns a cosine into a PickScore.
    pub fn scale(&self) -> Result<f64> {
        let s = self
            .model
            .logit_scale()
            .to_dtype(DType::F64)
            .and_then(|t| t.to_scalar::<f64>())?;
        Ok(s.exp())
    }
}

fn cat_rows(parts: &[Tensor]) -> Result<Tensor> {
    if parts.is_empty() {
        return Err(StageError::Failed("nothing to embed".into()).into());
    }
    Ok(Tensor::cat(parts, 0)?)
}

/// `(b, d)` tensor → rows of f64.
pub(crate) fn rows_f64(t: &Tensor) -> Result<Vec<Vec<f64>>> {
    Ok(t.to_dtype(DType::F64).and_then(|t| t.to_vec2::<f64>())?)
}

/// Cosine similarity in f64.
pub(crate) fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|v| v * v).sum::<f64>().sqrt();
    let nb = b.iter().map(|v| v * v).sum::<f64>().sqrt();
    dot / (na * nb).max(f64::MIN_POSITIVE)
}

/// The size knobs of the tiny CLIP (both towers share width, depth and heads).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TinyClip {
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub patch: usize,
    pub projection: usize,
}

impl TinyClip {
    /// The HF-style configuration for `vocab` and images of side `canvas`: exact GELU, the
    /// text context the vocabulary's longest prompt needs, pooling at its end-of-text id.
    pub fn config(&self, vocab: &Vocab, canvas: usize) -> ClipConfig {
        ClipConfig {
            text_config: ClipTextConfig {
                vocab_size: vocab.size(),
                hidden_size: self.width,
                intermediate_size: 4 * self.width,
                num_hidden_layers: self.layers,
                num_attention_heads: self.heads,
                max_position_embeddings: vocab.max_len,
                hidden_act: Activation::Gelu,
                layer_norm_eps: 1e-5,
                eos_token_id: vocab.eos(),
            },
            vision_config: ClipVisionConfig {
                hidden_size: self.width,
                intermediate_size: 4 * self.width,
                num_hidden_layers: self.layers,
                num_attention_heads: self.heads,
                num_channels: 3,
                image_size: canvas,
                patch_size: self.patch,
                hidden_act: Activation::Gelu,
                layer_norm_eps: 1e-5,
            },
            projection_dim: self.projection,
            logit_scale_init_value: (1.0f64 / 0.07).ln(),
        }
    }
}

/// CLIP's symmetric InfoNCE loss on a batch of matching (image, prompt) rows: cross-entropy of
/// `exp(logit_scale)·cos` over the prompts for each image and over the images for each prompt.
pub fn contrastive_loss(
    model: &ClipModel,
    pixels: &Tensor,
    ids: &Tensor,
) -> candle_core::Result<Tensor> {
    let img = l2_normalize(&model.get_image_features(pixels)?)?;
    let txt = l2_normalize(&model.get_text_features(ids)?)?;
    let logits = img
        .matmul(&txt.t()?)?
        .broadcast_mul(&model.logit_scale().exp()?)?;
    let n = logits.dim(0)?;
    let targets = Tensor::arange(0u32, n as u32, logits.device())?;
    let by_image = candle_nn::loss::cross_entropy(&logits, &targets)?;
    let by_text = candle_nn::loss::cross_entropy(&logits.t()?.contiguous()?, &targets)?;
    (by_image + by_text)? / 2.0
}

/// PickScore's loss on a batch of pairs (spo-reference.md §3.3): `pixels0`, `pixels1` the two
/// images of each pair, `ids` its prompt, `labels` `(b, 2)` = (label_0, label_1), `weights`
/// `(b,)` summing to 1 (`1/num_example_per_prompt`, normalised over the batch).
pub fn preference_loss(
    model: &ClipModel,
    pixels0: &Tensor,
    pixels1: &Tensor,
    ids: &Tensor,
    labels: &Tensor,
    weights: &Tensor,
) -> candle_core::Result<Tensor> {
    let b = pixels0.dim(0)?;
    let img = model.get_image_features(&Tensor::cat(&[pixels0, pixels1], 0)?)?;
    let txt = model.get_text_features(ids)?;
    let s0 = model.paired_logits(&img.narrow(0, 0, b)?, &txt)?;
    let s1 = model.paired_logits(&img.narrow(0, b, b)?, &txt)?;
    let logits = Tensor::stack(&[&s0, &s1], 1)?;
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let ce = (labels * logp)?.sum(1)?.neg()?;
    // Ties (0.5/0.5) add log 0.5, so that their optimum, equal logits, has loss 0.
    let tie = labels
        .narrow(1, 0, 1)?
        .squeeze(1)?
        .eq(0.5)?
        .to_dtype(DType::F32)?;
    let per_pair = (ce + (tie * 0.5f64.ln())?)?;
    (per_pair * weights)?.sum_all()
}

/// The training seed of a scorer cell: its `seed` param. The in-world scorers are not on the
/// pipeline's seed axis: one set of scorers judges every seed's samples, so the spread over
/// seeds measures the method, not the scorers (and they are trained once, not once per seed).
pub(crate) fn cell_seed(cx: &StageContext) -> Result<u64> {
    Ok(FromParam::from_param(cx.params(), "seed")?)
}

/// The optimiser params every training kind here shares.
pub(crate) fn optimiser_params(
    steps: i64,
    lr: f64,
    weight_decay: f64,
    warmup: i64,
) -> Vec<ParamSpec> {
    vec![
        ParamSpec::int("steps", steps)
            .min(1.0)
            .doc("optimiser steps"),
        ParamSpec::float("lr", lr)
            .range(1e-8, 1.0)
            .doc("AdamW peak learning rate"),
        ParamSpec::float("weight_decay", weight_decay)
            .range(0.0, 1.0)
            .doc("AdamW decoupled weight decay"),
        ParamSpec::int("warmup", warmup)
            .min(0.0)
            .doc("steps of linear learning-rate warm-up from 0; constant after"),
        ParamSpec::int("checkpoint_every", 100)
            .min(1.0)
            .doc("steps between resumable checkpoints in the scratch directory"),
        ParamSpec::int("seed", 0)
            .min(0.0)
            .doc("seed of the initial weights and batches"),
    ]
}

/// The optimiser settings read from [`optimiser_params`].
pub(crate) struct Schedule {
    pub steps: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub warmup: usize,
    pub every: usize,
}

impl Schedule {
    pub(crate) fn read(p: &Params) -> Result<Schedule> {
        Ok(Schedule {
            steps: FromParam::from_param(p, "steps")?,
            lr: FromParam::from_param(p, "lr")?,
            weight_decay: FromParam::from_param(p, "weight_decay")?,
            warmup: FromParam::from_param(p, "warmup")?,
            every: FromParam::from_param(p, "checkpoint_every")?,
        })
    }
    /// AdamW over every variable of `varmap`.
    pub(crate) fn optimiser(&self, varmap: &VarMap) -> Result<AdamW> {
        let config = AdamWConfig {
            lr: self.lr,
            weight_decay: self.weight_decay,
            ..AdamWConfig::default()
        };
        Ok(named_vars(varmap).and_then(|v| AdamW::new(v, config))?)
    }
    /// The learning rate of step `step` (0-based): linear warm-up, then constant, so that a
    /// run's first steps do not depend on its length.
    pub(crate) fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup {
            self.lr * (step + 1) as f64 / self.warmup as f64
        } else {
            self.lr
        }
    }
}

/// One optimiser step on `loss`; returns its value.
pub(crate) fn step(opt: &mut AdamW, loss: &Tensor) -> Result<f64> {
    let grads = loss.backward()?;
    opt.step(&grads)?;
    Ok(loss
        .to_dtype(DType::F64)
        .and_then(|l| l.to_scalar::<f64>())?)
}

spo_core::stage_params! {
    /// The params of `clip-pretrain` besides [`optimiser_params`].
    pub struct ClipPretrainParams {
        /// (render, prompt) rows per contrastive batch
        batch: usize = int(64).range(2.0, 4096.0),
        /// width of both towers
        width: usize = int(64).range(8.0, 1024.0),
        /// transformer layers per tower
        layers: usize = int(2).range(1.0, 24.0),
        /// attention heads (must divide width)
        heads: usize = int(4).range(1.0, 32.0),
        /// vision patch side in pixels (must divide the canvas)
        patch: usize = int(8).range(1.0, 64.0),
        /// width of the shared embedding space
        projection: usize = int(64).range(4.0, 1024.0),
        /// share of the batch's scenes also drawn with a random detail flaw, captioned with the
        /// flaw named ("…, very blurry") as web captions sometimes describe quality: hard
        /// negatives that make the embedding encode detail quality, which the frozen-CLIP
        /// aesthetic head reads
        flawed_share: f64 = float(0.0).range(0.0, 1.0),
        /// validation prompts in the retrieval evaluation
        eval_prompts: usize = int(256).range(2.0, 100_000.0),
        /// train, or embedded: write the pretrained text encoder compiled into spo-pipe (its
        /// params and world must be the recipe's)
        weights: Weights = choice_of(Weights::Train),
    }
}

/// The `clip-pretrain` stage kind.
pub struct ClipPretrain;

impl StageKind for ClipPretrain {
    fn name(&self) -> &'static str {
        "clip-pretrain"
    }
    fn version(&self) -> u32 {
        // 3: the world's coarser detail flaws (the renders captioned with a flaw change).
        // 2: CLIP's linear layers and attention are spo-nn's fused CPU ops (last-bit changes).
        3
    }
    fn summary(&self) -> &'static str {
        "Train the in-world CLIP (tiny ViT + text tower over the world's words) contrastively on clean renders of the training prompts"
    }
    fn params(&self) -> Vec<ParamSpec> {
        let mut p = optimiser_params(300, 2e-3, 0.05, 30);
        p.extend(ClipPretrainParams::specs());
        p
    }
    fn run(&self, cx: &mut StageContext) -> Result<(), StageError> {
        if ClipPretrainParams::from_params(cx.params())?.weights == Weights::Embedded {
            let world = cx.input_of_kind("world")?.clone();
            return Ok(crate::embedded::TEXT_ENCODER.write(cx, &world, None)?);
        }
        Ok(crate::inworld::on_cores(cx.threads(), || {
            let metrics = self.train(cx)?;
            record(cx, &metrics);
            Ok(())
        })?)
    }
}

impl ClipPretrain {
    /// Trains, writes the model, and returns the metrics (`run` records them).
    pub fn train(&self, cx: &mut StageContext) -> Result<Metrics> {
        let sched = Schedule::read(cx.params())?;
        let p = ClipPretrainParams::from_params(cx.params())?;
        let batch = p.batch;
        let arch = TinyClip {
            width: p.width,
            layers: p.layers,
            heads: p.heads,
            patch: p.patch,
            projection: p.projection,
        };
        let (eval_prompts, flawed_share) = (p.eval_prompts, p.flawed_share);
        let seed = cell_seed(cx)?;
        let device = crate::device::device();
        let world = WorldData::load(cx.input_of_kind("world")?)?;
        let quality_words = quality_vocabulary();
        let vocab = Vocab::build(
            world
                .train
                .iter()
                .chain(&world.validation)
                .map(|p| p.text.as_str())
                .chain(quality_words.iter().map(String::as_str)),
        );
        let n = world.train.len();
        if n < 2 {
            return Err(StageError::Failed(
                "contrastive training needs at least 2 training prompts".into(),
            )
            .into());
        }
        let mut clip = WorldClip::new(&arch, vocab, world.canvas as usize, seed, &device)?;
        let renders = render_all(&world, &world.train)?;
        let mut opt = sched.optimiser(&clip.varmap)?;
        let mut t: Trainer = Trainer::start(
            cx,
            "clip",
            sched.steps,
            sched.every,
            seed,
            &mut clip.varmap,
            &mut opt,
        )?;
        let batch = batch.min(n);
        while t.step < sched.steps {
            opt.set_learning_rate(sched.lr_at(t.step));
            // Distinct prompts per batch (no duplicate positives).
            let rows: Vec<usize> = t.rng.permutation(n).into_iter().take(batch).collect();
            // Each scene's clean render with its prompt and, for a `flawed_share` of them, a
            // flawed render with the prompt naming the flaw: a hard negative of the clean row
            // that only the image's quality tells apart.
            let mut flawed: Vec<(RgbImage, String)> = Vec::new();
            for &i in &rows {
                let draw = t.rng.uniform(3, 0.0, 1.0, DType::F32, &Device::Cpu);
                let [u, k, strength] = draw.and_then(|d| d.to_vec1::<f32>())?[..] else {
                    return Err(StageError::Failed("three uniform draws expected".into()).into());
                };
                if f64::from(u) < flawed_share {
                    let kinds = FlawKind::ALL.len();
                    let kind = FlawKind::ALL[(k * kinds as f32) as usize % kinds];
                    let flaw = Flaw {
                        kind,
                        strength: 0.2 + 0.8 * strength,
                    };
                    let prompt = &world.train[i];
                    let image = spo_world::render_flawed(
                        &world.atlas,
                        &prompt.scene,
                        Some(flaw),
                        t.rng.generator(),
                    )?;
                    flawed.push((image, format!("{}, {}", prompt.text, quality_phrase(flaw))));
                }
            }
            let images: Vec<&RgbImage> = rows
                .iter()
                .map(|&i| &renders[i])
                .chain(flawed.iter().map(|f| &f.0))
                .collect();
            let texts: Vec<&str> = rows
                .iter()
                .map(|&i| world.train[i].text.as_str())
                .chain(flawed.iter().map(|f| f.1.as_str()))
                .collect();
            let pixels = images_to_tensor(&images, &device)?;
            let ids = clip.vocab.batch(&texts, &device)?;
            let loss = contrastive_loss(&clip.model, &pixels, &ids)?;
            let value = step(&mut opt, &loss)?;
            t.record(value, &clip.varmap, &opt)?;
        }
        t.finish(cx, "clip")?;

        let eval = &world.validation[..eval_prompts.min(world.validation.len())];
        let eval_renders = render_all(&world, eval)?;
        let texts: Vec<&str> = eval.iter().map(|p| p.text.as_str()).collect();
        let images: Vec<&RgbImage> = eval_renders.iter().collect();
        let top1 = retrieval_top1(&clip, &images, &texts)?;
        clip.write(cx)?;
        Ok(vec![
            ("val_retrieval_top1", top1),
            ("val_retrieval_chance", 1.0 / texts.len() as f64),
            ("logit_scale", clip.scale()?.ln()),
        ])
    }
}

/// The metrics a training run reports, by name.
pub type Metrics = Vec<(&'static str, f64)>;

/// Records `metrics` in the context.
pub(crate) fn record(cx: &mut StageContext, metrics: &Metrics) {
    for (name, value) in metrics {
        cx.metric(name, *value);
    }
}

/// How a caption names a detail flaw: an adverb for its strength and an adjective for its kind.
pub fn quality_phrase(flaw: Flaw) -> String {
    let adverb = if flaw.strength < 0.5 {
        "slightly"
    } else {
        "very"
    };
    let adjective = match flaw.kind {
        FlawKind::Blur => "blurry",
        FlawKind::Noise => "grainy",
        FlawKind::Blocking => "blocky",
        FlawKind::ColourBleed => "smeared",
        FlawKind::Jagged => "jagged",
    };
    format!("{adverb} {adjective}")
}

/// Every phrase [`quality_phrase`] can write, for the vocabulary.
fn quality_vocabulary() -> Vec<String> {
    FlawKind::ALL
        .iter()
        .flat_map(|&kind| [0.2, 0.9].map(|strength| quality_phrase(Flaw { kind, strength })))
        .collect()
}

/// Clean renders of `prompts`' scenes.
pub(crate) fn render_all(
    world: &WorldData,
    prompts: &[crate::worlddata::Prompt],
) -> Result<Vec<RgbImage>> {
    Ok(prompts
        .iter()
        .map(|p| spo_world::render(&world.atlas, &p.scene))
        .collect::<Result<_, _>>()?)
}

/// Image → text top-1 retrieval accuracy among `texts` (a hit when the nearest prompt's text
/// equals the image's own, so duplicate prompts do not count against the model).
pub fn retrieval_top1(clip: &WorldClip, images: &[&RgbImage], texts: &[&str]) -> Result<f64> {
    if images.is_empty() || images.len() != texts.len() {
        return Err(StageError::Failed(format!(
            "retrieval needs as many images as prompts, at least one ({} and {})",
            images.len(),
            texts.len()
        ))
        .into());
    }
    let img = clip.image_embeddings(images)?;
    let txt = clip.text_embeddings(texts)?;
    let best: Vec<u32> = img
        .matmul(&txt.t()?)
        .and_then(|s| s.argmax(1))
        .and_then(|a| a.to_vec1::<u32>())?;
    let hits = best
        .iter()
        .enumerate()
        .filter(|&(i, &j)| texts[j as usize] == texts[i])
        .count();
    Ok(hits as f64 / texts.len() as f64)
}

/// Held-out detail-only pairs (validation scenes) the PickScore analogue is also judged on.
const DETAIL_PAIRS: usize = 256;

/// The `pickscore-train` stage kind.
pub struct PickScoreTrain;

spo_core::stage_params! {
    /// The params of `pickscore-train` besides [`optimiser_params`].
    pub struct PickScoreParams {
        /// pairs per step
        batch: usize = int(32).range(1.0, 4096.0),
        /// share of the training prompts whose pairs are held out for the accuracy
        holdout: f64 = float(0.1).range(0.01, 0.9),
    }
}

impl StageKind for PickScoreTrain {
    fn name(&self) -> &'static str {
        "pickscore-train"
    }
    fn version(&self) -> u32 {
        // 2: CLIP's linear layers and attention are spo-nn's fused CPU ops (last-bit changes).
        2
    }
    fn summary(&self) -> &'static str {
        "Fine-tune the in-world CLIP on the generic preference pairs with PickScore's loss: the PickScore analogue"
    }
    fn params(&self) -> Vec<ParamSpec> {
        let mut p = optimiser_params(300, 3e-4, 0.05, 30);
        p.extend(PickScoreParams::specs());
        p
    }
    fn run(&self, cx: &mut StageContext) -> Result<(), StageError> {
        Ok(crate::inworld::on_cores(cx.threads(), || {
            let metrics = self.train(cx)?;
            record(cx, &metrics);
            Ok(())
        })?)
    }
}

impl PickScoreTrain {
    /// Fine-tunes, writes the model, and returns the metrics (`run` records them).
    pub fn train(&self, cx: &mut StageContext) -> Result<Metrics> {
        let sched = Schedule::read(cx.params())?;
        let PickScoreParams { batch, holdout } = PickScoreParams::from_params(cx.params())?;
        let seed = cell_seed(cx)?;
        let device = crate::device::device();
        let pairs = load_pairs(cx.input_of_kind("world")?, 0)?;
        let (train, held) = split_by_caption(&pairs, holdout);
        if train.is_empty() || held.is_empty() {
            return Err(StageError::Failed(format!(
                "{} pairs are too few to hold out {holdout} of their prompts",
                pairs.len()
            ))
            .into());
        }
        let mut clip = WorldClip::load(cx.input_of_kind("clip-pretrain")?, &device)?;
        let before = pair_accuracy(&clip, &held)?;
        let mut opt = sched.optimiser(&clip.varmap)?;
        let mut t: Trainer = Trainer::start(
            cx,
            "pickscore",
            sched.steps,
            sched.every,
            seed,
            &mut clip.varmap,
            &mut opt,
        )?;
        let batch = batch.min(train.len());
        while t.step < sched.steps {
            opt.set_learning_rate(sched.lr_at(t.step));
            let rows: Vec<&Pair> = t
                .rng
                .indices(batch, train.len())
                .into_iter()
                .map(|i| train[i])
                .collect();
            let loss = pair_batch_loss(&clip, &rows, &device)?;
            let value = step(&mut opt, &loss)?;
            t.record(value, &clip.varmap, &opt)?;
        }
        t.finish(cx, "pickscore")?;
        let after = pair_accuracy(&clip, &held)?;
        clip.write(cx)?;
        let world = WorldData::load(cx.input_of_kind("world")?)?;
        let detail = crate::calibrate::detail_pairs(&world, DETAIL_PAIRS, 0.8, seed)?;
        let mut metrics: Metrics = vec![
            ("heldout_accuracy", after.accuracy),
            ("heldout_accuracy_pretrained", before.accuracy),
            ("heldout_pairs", after.decided as f64),
            ("logit_scale", clip.scale()?.ln()),
        ];
        if !detail.is_empty() {
            let overall = crate::calibrate::pickscore_detail_accuracy(&clip, &detail)?;
            metrics.extend(overall.first().map(|a| ("detail_pair_accuracy", a.1)));
        }
        Ok(metrics)
    }
}

/// [`preference_loss`] on `pairs` (their images, captions, labels and weights).
pub fn pair_batch_loss(clip: &WorldClip, pairs: &[&Pair], device: &Device) -> Result<Tensor> {
    let side = |k: usize| -> Vec<&RgbImage> { pairs.iter().map(|p| &p.images[k]).collect() };
    let pixels0 = images_to_tensor(&side(0), device)?;
    let pixels1 = images_to_tensor(&side(1), device)?;
    let captions: Vec<&str> = pairs.iter().map(|p| p.caption.as_str()).collect();
    let ids = clip.vocab.batch(&captions, device)?;
    let labels: Vec<f32> = pairs
        .iter()
        .flat_map(|p| [p.labels[0] as f32, p.labels[1] as f32])
        .collect();
    let inv: Vec<f64> = pairs
        .iter()
        .map(|p| 1.0 / p.num_example_per_prompt)
        .collect();
    let total: f64 = inv.iter().sum();
    let weights: Vec<f32> = inv.iter().map(|w| (w / total) as f32).collect();
    let labels = Tensor::from_vec(labels, (pairs.len(), 2), device)?;
    let weights = Tensor::from_vec(weights, pairs.len(), device)?;
    Ok(preference_loss(
        &clip.model,
        &pixels0,
        &pixels1,
        &ids,
        &labels,
        &weights,
    )?)
}

/// Splits pairs into training and held-out ones by prompt: the last `share` of the distinct
/// captions (in order of first appearance) are held out, with every pair of theirs.
pub fn split_by_caption(pairs: &[Pair], share: f64) -> (Vec<&Pair>, Vec<&Pair>) {
    let (train, held) = split_indices_by_caption(pairs, share);
    (
        train.into_iter().map(|i| &pairs[i]).collect(),
        held.into_iter().map(|i| &pairs[i]).collect(),
    )
}

/// [`split_by_caption`] as indices into `pairs`.
pub fn split_indices_by_caption(pairs: &[Pair], share: f64) -> (Vec<usize>, Vec<usize>) {
    let mut order: Vec<&str> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for p in pairs {
        if seen.insert(p.caption.as_str()) {
            order.push(p.caption.as_str());
        }
    }
    let keep = order.len() - ((order.len() as f64 * share).round() as usize).min(order.len());
    let held: std::collections::HashSet<&str> = order[keep..].iter().copied().collect();
    (0..pairs.len()).partition(|&i| !held.contains(pairs[i].caption.as_str()))
}

/// Agreement of a scorer with the labels of the pairs it decides (ties excluded).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairAccuracy {
    /// Share of the non-tie pairs whose preferred image scores higher.
    pub accuracy: f64,
    /// Non-tie pairs.
    pub decided: usize,
}

/// How often the model scores the preferred image of a non-tie pair higher (equal scores count
/// half).
pub fn pair_accuracy(clip: &WorldClip, pairs: &[&Pair]) -> Result<PairAccuracy> {
    let decided: Vec<&Pair> = pairs
        .iter()
        .copied()
        .filter(|p| p.labels[0] != p.labels[1])
        .collect();
    if decided.is_empty() {
        return Err(StageError::Failed(
            "no pair with a preference (all ties) to measure accuracy on".into(),
        )
        .into());
    }
    let captions: Vec<&str> = decided.iter().map(|p| p.caption.as_str()).collect();
    let s0 = clip.cosines(
        &decided.iter().map(|p| &p.images[0]).collect::<Vec<_>>(),
        &captions,
    )?;
    let s1 = clip.cosines(
        &decided.iter().map(|p| &p.images[1]).collect::<Vec<_>>(),
        &captions,
    )?;
    let right: f64 = decided
        .iter()
        .zip(s0.iter().zip(&s1))
        .map(|(p, (a, b))| {
            if a == b {
                0.5
            } else if (a > b) == (p.labels[0] > p.labels[1]) {
                1.0
            } else {
                0.0
            }
        })
        .sum();
    Ok(PairAccuracy {
        accuracy: right / decided.len() as f64,
        decided: decided.len(),
    })
}
