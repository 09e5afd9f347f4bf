//! The offline preference methods on the world's generic pairs: `diffusion-dpo` (Wallace et al.
//! 2023; next-wave A.1), the offline counterpart of SPO in Table 2, and `mapo` (Hong et al.
//! 2024; next-wave A.4), its reference-free successor of Table 1.
//!
//! Each step draws pairs (ties dropped, the preferred image first), empties a share of their
//! captions, noises both images of a pair with one shared t ~ U{0..999} and one shared ε, and
//! trains the policy (LoRA on the base model, as the in-world SPO does) on the per-sample
//! denoising errors: Diffusion-DPO lowers the winner's error relative to the frozen reference
//! (the LoRA switched off) more than the loser's (`spo_methods::diffusion_dpo::loss`); MaPO
//! lowers the winner's error and widens the margin between the two errors' log-odds
//! (`spo_methods::mapo::Mapo`). No guidance in training, as the references.
//!
//! Given a diffusers pipeline (a `hub` cell) and pairs in Pick-a-Pic's schema (a `pickapic`
//! stage) instead of the in-world inputs, the same steps run on the VAE's latents of the pairs'
//! images, prepared as the Diffusion-DPO script prepares them (Pillow-exact bilinear resize,
//! centre crop, random flips).

use candle_core::{DType, Tensor};
use candle_nn::VarMap;
use image::RgbImage;
use spo_clip::preprocess::{CropRounding, PilFilter, resize_centre_crop};
use spo_core::{ParamSpec, StageContext, StageError, StageKind};
use spo_diffusion::{
    AddedConditioning, DiffusersFolder, NoiseSchedule, SchedulerConfig, UNet2DConditionModel,
};
use spo_methods::mapo::Mapo;
use spo_methods::{diffusion_dpo, per_sample_mse};
use spo_nn::{AdamW, SeededRng, add_gradients};
use spo_sd::spo::UnetBatch;
use spo_sd::{StableDiffusion, Workload};

use crate::checkpoint::ExactF64;
use crate::device::device;
use crate::error::{At, Result};
use crate::inworld::{InWorldClip, lora_policy, on_cores};
use crate::real::{self, Precision};
use crate::tensors::images_to_tensor;
use crate::training::{Trainer, warmup_cosine};
use crate::worlddata::{Pair, load_pairs};

spo_core::stage_params! {
    /// The params of `diffusion-dpo`.
    pub struct DpoParams {
        /// β of the loss (the reference launchers' 5000)
        beta: f64 = float(5000.0).range(0.0, 1e7),
        /// share of captions replaced by the empty prompt (the reference's 0.2)
        empty_prompt_share: f64 = float(0.2).range(0.0, 1.0),
        /// optimizer steps
        steps: usize = int(300).range(1.0, 1e7),
        /// pairs per micro-batch (one forward and backward)
        batch: usize = int(8).range(1.0, 4096.0),
        /// micro-batches per optimizer step, their gradients averaged: a step takes batch ×
        /// accumulate pairs (the script's SD-1.5 step: 1 × 128 on each of 16 GPUs = 2048)
        accumulate: usize = int(1).range(1.0, 65536.0),
        /// peak learning rate: linear warm-up, then cosine decay to zero (5e-4, SPO's, left the
        /// loss above ln 2 at the end)
        lr: f64 = float(1e-4).range(1e-8, 1.0),
        /// learning-rate warm-up steps
        warmup: usize = int(20).range(0.0, 1e7),
        /// LoRA rank (alpha = rank)
        rank: usize = int(4).range(1.0, 256.0),
        /// use at most this many of the world's pairs (0: all)
        pairs: usize = int(0).min(0.0),
        checkpoint_every: usize = int(50).range(1.0, 1e7),
        /// snapshots of the LoRA kept at evenly spaced steps for the `curve` kind (0: none)
        snapshots: usize = int(4).range(0.0, 1000.0),
        /// on real weights: the frozen weights' dtype (the LoRA and AdamW's state stay f32; the
        /// in-world models always run f32)
        precision: Precision = choice_of(Precision::F16),
        /// on real weights: recompute the UNet layer by layer in the backward instead of
        /// keeping its graph (docs/real-weights.md "Device, precision and memory")
        gradient_checkpointing: bool = bool(true),
        /// on real weights: latents per UNet call (the frozen reference's always, the policy's
        /// when checkpointing) and images per VAE call
        micro_batch: usize = int(8).range(1.0, 4096.0),
        /// on real weights: flip each image left–right with probability ½ (the Diffusion-DPO
        /// script's default `RandomHorizontalFlip`; the world's positions would not survive it)
        random_flip: bool = bool(true),
        /// on real weights: the LoRA's gradient clipped to this global norm before each step
        /// (the Diffusion-DPO script's 1.0; 0: off)
        max_grad_norm: f64 = float(1.0).range(0.0, 1e6),
    }
}

/// The `diffusion-dpo` stage kind.
pub struct DiffusionDpo;

impl StageKind for DiffusionDpo {
    fn name(&self) -> &'static str {
        "diffusion-dpo"
    }
    fn version(&self) -> u32 {
        // 2: LoRA snapshots for the `curve` kind; the LoRA and logs are unchanged.
        2
    }
    fn summary(&self) -> &'static str {
        "Diffusion-DPO fine-tuning with LoRA on the world's generic preference pairs (needs world, clip-pretrain, base-pretrain; on real weights: a hub pipeline and a pickapic stage)"
    }
    fn params(&self) -> Vec<ParamSpec> {
        DpoParams::specs()
    }
    fn seeded(&self) -> bool {
        true
    }
    fn run(&self, cx: &mut StageContext) -> Result<(), StageError> {
        let p = DpoParams::from_params(cx.params())?;
        let setup = Offline {
            name: "dpo",
            steps: p.steps,
            batch: p.batch,
            accumulate: p.accumulate,
            lr: p.lr,
            warmup: p.warmup,
            rank: p.rank,
            pairs: p.pairs,
            empty_prompt_share: p.empty_prompt_share,
            checkpoint_every: p.checkpoint_every,
            snapshots: p.snapshots,
            precision: p.precision,
            gradient_checkpointing: p.gradient_checkpointing,
            micro_batch: p.micro_batch,
            random_flip: p.random_flip,
            max_grad_norm: p.max_grad_norm,
        };
        Ok(train(cx, &setup, Objective::Dpo { beta: p.beta })?)
    }
}

spo_core::stage_params! {
    /// The params of `mapo`.
    pub struct MapoParams {
        /// β of the margin term (MaPO's `beta_mapo` 0.1)
        beta: f64 = float(0.1).range(0.0, 1e6),
        /// s in ψ(ℓ) = sℓ/(e^{sℓ} − 1) (MaPO's `snr_value` 0.5)
        snr_value: f64 = float(0.5).range(1e-6, 100.0),
        /// share of captions replaced by the empty prompt (MaPO: none)
        empty_prompt_share: f64 = float(0.0).range(0.0, 1.0),
        /// optimizer steps
        steps: usize = int(300).range(1.0, 1e7),
        /// pairs per micro-batch (one forward and backward)
        batch: usize = int(8).range(1.0, 4096.0),
        /// micro-batches per optimizer step, their gradients averaged (MaPO's README: 2)
        accumulate: usize = int(1).range(1.0, 65536.0),
        /// peak learning rate: linear warm-up, then cosine decay to zero (MaPO's 5e-4)
        lr: f64 = float(5e-4).range(1e-8, 1.0),
        /// learning-rate warm-up steps
        warmup: usize = int(20).range(0.0, 1e7),
        /// LoRA rank (alpha = rank)
        rank: usize = int(4).range(1.0, 256.0),
        /// use at most this many of the world's pairs (0: all)
        pairs: usize = int(0).min(0.0),
        checkpoint_every: usize = int(50).range(1.0, 1e7),
        /// snapshots of the LoRA kept at evenly spaced steps for the `curve` kind (0: none)
        snapshots: usize = int(4).range(0.0, 1000.0),
        /// on real weights: the frozen weights' dtype (the LoRA and AdamW's state stay f32; the
        /// in-world models always run f32)
        precision: Precision = choice_of(Precision::F16),
        /// on real weights: recompute the UNet layer by layer in the backward instead of
        /// keeping its graph (docs/real-weights.md "Device, precision and memory")
        gradient_checkpointing: bool = bool(true),
        /// on real weights: latents per UNet call (the frozen reference's always, the policy's
        /// when checkpointing) and images per VAE call
        micro_batch: usize = int(8).range(1.0, 4096.0),
        /// on real weights: flip each image left–right with probability ½ (the Diffusion-DPO
        /// script's default `RandomHorizontalFlip`; the world's positions would not survive it)
        random_flip: bool = bool(true),
        /// on real weights: the LoRA's gradient clipped to this global norm before each step
        /// (0: off; 1.0 as Diffusion-DPO's script: MaPO's arguments are not in the references)
        max_grad_norm: f64 = float(1.0).range(0.0, 1e6),
    }
}

/// The `mapo` stage kind.
pub struct MapoTrain;

impl StageKind for MapoTrain {
    fn name(&self) -> &'static str {
        "mapo"
    }
    fn version(&self) -> u32 {
        // 2: LoRA snapshots for the `curve` kind; the LoRA and logs are unchanged.
        2
    }
    fn summary(&self) -> &'static str {
        "MaPO fine-tuning with LoRA on the world's generic preference pairs, reference-free (needs world, clip-pretrain, base-pretrain; on real weights: a hub pipeline and a pickapic stage)"
    }
    fn params(&self) -> Vec<ParamSpec> {
        MapoParams::specs()
    }
    fn seeded(&self) -> bool {
        true
    }
    fn run(&self, cx: &mut StageContext) -> Result<(), StageError> {
        let p = MapoParams::from_params(cx.params())?;
        let setup = Offline {
            name: "mapo",
            steps: p.steps,
            batch: p.batch,
            accumulate: p.accumulate,
            lr: p.lr,
            warmup: p.warmup,
            rank: p.rank,
            pairs: p.pairs,
            empty_prompt_share: p.empty_prompt_share,
            checkpoint_every: p.checkpoint_every,
            snapshots: p.snapshots,
            precision: p.precision,
            gradient_checkpointing: p.gradient_checkpointing,
            micro_batch: p.micro_batch,
            random_flip: p.random_flip,
            max_grad_norm: p.max_grad_norm,
        };
        let objective = Objective::Mapo(Mapo {
            beta: p.beta,
            snr_value: p.snr_value,
            ..Mapo::default()
        });
        Ok(train(cx, &setup, objective)?)
    }
}

/// What an offline method trains with, besides its objective.
struct Offline {
    /// The checkpoint's and the loss log's name.
    name: &'static str,
    steps: usize,
    batch: usize,
    accumulate: usize,
    lr: f64,
    warmup: usize,
    rank: usize,
    pairs: usize,
    empty_prompt_share: f64,
    checkpoint_every: usize,
    snapshots: usize,
    precision: Precision,
    gradient_checkpointing: bool,
    micro_batch: usize,
    random_flip: bool,
    max_grad_norm: f64,
}

/// What an offline method minimises over a batch's per-sample denoising errors.
enum Objective {
    Dpo { beta: f64 },
    Mapo(Mapo),
}

impl Objective {
    /// The loss over `b` pairs and the share of pairs it already orders right: the implicit
    /// accuracy for Diffusion-DPO, the share whose winner has the lower error for MaPO.
    /// `model` holds the policy's per-sample errors, winners first; `reference` gives the
    /// frozen reference's (Diffusion-DPO only asks for them).
    fn loss(
        &self,
        b: usize,
        model: &Tensor,
        reference: impl FnOnce() -> Result<Tensor>,
    ) -> Result<(Tensor, f64)> {
        match self {
            Objective::Dpo { beta } => {
                let reference = reference()?;
                let out = diffusion_dpo::loss(
                    &model.narrow(0, 0, b)?,
                    &model.narrow(0, b, b)?,
                    &reference.narrow(0, 0, b)?,
                    &reference.narrow(0, b, b)?,
                    *beta,
                )?;
                Ok((out.loss, out.implicit_accuracy))
            }
            Objective::Mapo(mapo) => {
                let (w, l) = (model.narrow(0, 0, b)?, model.narrow(0, b, b)?);
                let lower = w
                    .lt(&l)?
                    .to_dtype(DType::F64)?
                    .mean_all()?
                    .to_scalar::<f64>()?;
                Ok((mapo.loss(&w, &l)?, lower))
            }
        }
    }

    /// The name of the metric holding the last steps' mean of the loss's accuracy.
    fn accuracy_metric(&self) -> &'static str {
        match self {
            Objective::Dpo { .. } => "implicit_accuracy",
            Objective::Mapo(_) => "winner_lower_error",
        }
    }
}

/// The pairs with a preference, the preferred image first.
fn ordered(pairs: Vec<Pair>) -> Vec<Pair> {
    pairs
        .into_iter()
        .filter(|p| p.labels[0] != p.labels[1])
        .map(|mut p| {
            if p.labels[1] > p.labels[0] {
                p.images.swap(0, 1);
                p.labels.swap(0, 1);
            }
            p
        })
        .collect()
}

/// The model an offline method trains: the in-world base on pixels, or a real pipeline on the
/// VAE's latents.
enum Model {
    World {
        text: Box<InWorldClip>,
        unet: Box<UNet2DConditionModel>,
    },
    Real(Box<StableDiffusion>),
}

impl Model {
    fn unet(&self) -> &UNet2DConditionModel {
        match self {
            Model::World { unet, .. } => unet,
            Model::Real(sd) => sd.unet(),
        }
    }

    /// What the UNet denoises for `images`: the pixels in the world; on real weights the
    /// images prepared as the Diffusion-DPO script's torchvision transforms do — the shortest
    /// side resized to the pipeline's by Pillow's bilinear filter, the centre square cut out
    /// (offsets rounded half to even), each flipped left–right with probability ½ from `rng`
    /// when `p.random_flip` — in [−1, 1], encoded by the VAE `p.micro_batch` at a time with its
    /// latent distribution sampled from `rng`, in f32.
    fn x0(&self, images: &[&RgbImage], p: &Offline, rng: &mut SeededRng) -> Result<Tensor> {
        let dev = device();
        match self {
            Model::World { .. } => images_to_tensor(images, &dev),
            Model::Real(sd) => {
                // square: the pipeline draws sample_size × sample_size latents
                let [_, w] = sd.image_size();
                let flips = if p.random_flip {
                    rng.indices(images.len(), 2)
                } else {
                    vec![0; images.len()]
                };
                let [c, lh, lw] = sd.latent_shape();
                let noise = rng.normal((images.len(), c, lh, lw), 0.0, 1.0, DType::F32, &dev)?;
                // prepared, converted and encoded `micro_batch` images at a time
                let (mut latents, micro_batch) = (Vec::new(), p.micro_batch.max(1));
                for start in (0..images.len()).step_by(micro_batch) {
                    let len = micro_batch.min(images.len() - start);
                    let fitted: Vec<RgbImage> = images[start..start + len]
                        .iter()
                        .zip(&flips[start..start + len])
                        .map(|(im, &flip)| {
                            let square = resize_centre_crop(
                                im,
                                w as u32,
                                PilFilter::Bilinear,
                                CropRounding::HalfEven,
                            );
                            if flip == 1 {
                                image::imageops::flip_horizontal(&square)
                            } else {
                                square
                            }
                        })
                        .collect();
                    let pixels = images_to_tensor(&fitted.iter().collect::<Vec<_>>(), &dev)?;
                    let z = sd.encode(&pixels, &noise.narrow(0, start, len)?)?;
                    latents.push(z.to_dtype(DType::F32)?);
                }
                Ok(Tensor::cat(&latents, 0)?)
            }
        }
    }

    /// The UNet's dtype, latents per call and whether it is checkpointed in training: the
    /// in-world model runs f32 with its graph, a real pipeline as `p` says.
    fn run_settings(&self, p: &Offline) -> (DType, usize, bool) {
        match self {
            Model::World { .. } => (DType::F32, usize::MAX, false),
            Model::Real(sd) => (sd.dtype(), p.micro_batch, p.gradient_checkpointing),
        }
    }

    /// The global norm the LoRA's gradient is clipped to: none in the world (its runs were
    /// scaled without it), `p.max_grad_norm` on real weights.
    fn max_grad_norm(&self, p: &Offline) -> Option<f64> {
        match self {
            Model::World { .. } => None,
            Model::Real(_) => (p.max_grad_norm > 0.0).then_some(p.max_grad_norm),
        }
    }

    /// The prompts' conditioning for the UNet, without guidance.
    fn context(&self, texts: &[&str]) -> Result<(Tensor, Option<AddedConditioning>)> {
        match self {
            Model::World { text, .. } => Ok((text.context(texts, &device())?, None)),
            Model::Real(sd) => Ok(sd.prompt_states(texts)?),
        }
    }
}

/// Loads the pairs and the model of an offline method's cell: the world's pairs and in-world
/// base, or — given a diffusers pipeline (a `hub` cell with model_index.json) — the pairs of a
/// `pickapic` (or `world`) input and that pipeline.
fn load(
    cx: &mut StageContext,
    p: &Offline,
    seed: u64,
) -> Result<(Vec<Pair>, Model, VarMap, AdamW)> {
    let dev = device();
    let is_real = real::has_pipeline(cx);
    let pairs_input = if is_real {
        cx.inputs()
            .iter()
            .find(|i| (i.kind == "pickapic" || i.kind == "world") && i.file("pairs.parquet").is_ok())
            .ok_or_else(|| StageError::Input {
                need: "pickapic".into(),
                message: format!(
                    "stage `{}` on real weights needs preference pairs: a `pickapic` stage (Pick-a-Pic's shards)",
                    cx.stage()
                ),
            })?
    } else {
        cx.input_of_kind("world")?
    };
    let pairs = ordered(load_pairs(pairs_input, p.pairs)?);
    if pairs.is_empty() {
        return Err(StageError::Input {
            need: pairs_input.stage.clone(),
            message: format!(
                "{}: no pair with a preference (every pair a tie{}); a preference method \
                 has nothing to learn from",
                pairs_input.file("pairs.parquet")?.display(),
                if p.pairs > 0 {
                    format!(" among the first {} read: param `pairs`", p.pairs)
                } else {
                    String::new()
                }
            ),
        }
        .into());
    }
    if is_real {
        let pipeline = real::pipeline_input(cx)?.clone();
        let dtype = p.precision.dtype(&dev)?;
        let work = Workload::Train {
            // a step's UNet call takes both images of each pair, unguided
            batch: 2 * p.batch,
            rollout_batch: p.micro_batch,
            rank: p.rank,
            checkpointing: p.gradient_checkpointing,
            guided: false,
        };
        real::check_memory(cx, &DiffusersFolder::open(&pipeline.dir)?, dtype, work, 0)?;
        let (sd, lora_vars, opt) =
            real::lora_pipeline(&pipeline.dir, dtype, p.rank, seed, p.lr, 1e-2)?;
        return Ok((pairs, Model::Real(Box::new(sd)), lora_vars, opt));
    }
    let text = InWorldClip::load(cx.input_of_kind("clip-pretrain")?, &dev)?;
    let (unet, lora_vars, opt) = lora_policy(
        cx.input_of_kind("base-pretrain")?,
        p.rank,
        seed,
        p.lr,
        1e-2,
        &dev,
    )?;
    let model = Model::World {
        text: Box::new(text),
        unet: Box::new(unet),
    };
    Ok((pairs, model, lora_vars, opt))
}

/// Trains one cell of an offline method.
fn train(cx: &mut StageContext, p: &Offline, objective: Objective) -> Result<()> {
    let dev = device();
    let seed = cx.seed().unwrap_or(0);
    let (pairs, model, mut lora_vars, mut opt) = load(cx, p, seed)?;
    let unet = model.unet();
    let schedule = match &model {
        Model::World { .. } => NoiseSchedule::new(SchedulerConfig::sd15())?,
        Model::Real(sd) => NoiseSchedule::new(sd.scheduler().clone())?,
    };
    let train_steps = schedule.config().num_train_timesteps;
    let mut tr: Trainer<Vec<ExactF64>> = Trainer::start(
        cx,
        p.name,
        p.steps,
        p.checkpoint_every,
        seed,
        &mut lora_vars,
        &mut opt,
    )?;
    tr.keep_snapshots(p.snapshots, |path| unet.save_lora(path).at(path));
    // a step's pairs are drawn together, then trained `b` at a time
    let (b, k) = (p.batch, p.accumulate.max(1));
    let n = b * k;
    while tr.step < p.steps {
        opt.set_learning_rate(p.lr * warmup_cosine(tr.step, p.steps, p.warmup));
        let rng = &mut tr.rng;
        let chosen: Vec<&Pair> = rng
            .indices(n, pairs.len())
            .into_iter()
            .map(|i| &pairs[i])
            .collect();
        let empty: Vec<usize> = rng.indices(n, 1_000_000);
        let texts: Vec<&str> = chosen
            .iter()
            .zip(&empty)
            .map(|(pair, &u)| {
                if (u as f64) < p.empty_prompt_share * 1e6 {
                    ""
                } else {
                    pair.caption.as_str()
                }
            })
            .collect();
        let ts: Vec<i64> = rng
            .indices(n, train_steps)
            .into_iter()
            .map(|t| t as i64)
            .collect();
        let images: Vec<_> = (0..2)
            .flat_map(|side| chosen.iter().map(move |pair| &pair.images[side]))
            .collect();
        let x0 = model.x0(&images, p, rng)?;
        let noise = rng.normal(
            (n, x0.dim(1)?, x0.dim(2)?, x0.dim(3)?),
            0.0,
            1.0,
            DType::F32,
            &dev,
        )?;
        // one t and one ε per pair, shared by its winner and loser
        let noise = Tensor::cat(&[&noise, &noise], 0)?;
        let ts = Tensor::from_vec([ts.clone(), ts].concat(), 2 * n, &dev)?;
        let xt = schedule.add_noise(&x0, &noise, &ts)?;
        let (loss, accuracy) = on_cores(cx.threads(), || {
            let (dtype, micro_batch, checkpointing) = model.run_settings(p);
            let (mut loss_sum, mut accuracy_sum, mut pending) = (0.0, 0.0, None);
            for m in 0..k {
                // micro-batch m: its pairs' winners, then their losers
                let rows = |t: &Tensor| -> Result<Tensor> {
                    if k == 1 {
                        return Ok(t.clone());
                    }
                    Ok(Tensor::cat(
                        &[t.narrow(0, m * b, b)?, t.narrow(0, n + m * b, b)?],
                        0,
                    )?)
                };
                let (xt, ts, noise) = (rows(&xt)?, rows(&ts)?, rows(&noise)?);
                let (ctx, added) = model.context(&texts[m * b..(m + 1) * b])?;
                let ctx = Tensor::cat(&[&ctx, &ctx], 0)?;
                let added = match added {
                    Some(a) => Some(AddedConditioning {
                        text_embeds: Tensor::cat(&[&a.text_embeds, &a.text_embeds], 0)?,
                        time_ids: Tensor::cat(&[&a.time_ids, &a.time_ids], 0)?,
                    }),
                    None => None,
                };
                let batch = UnetBatch {
                    x: &xt,
                    ts: &ts,
                    context: &ctx,
                    added: added.as_ref(),
                };
                let (errors, backprop) = batch
                    .predict_for_training(unet, micro_batch, dtype, checkpointing)?
                    .map(|pred| Ok(per_sample_mse(pred, &noise)?))?;
                let reference = || -> Result<Tensor> {
                    unet.set_lora_enabled(false);
                    let pred = batch.predict(unet, micro_batch, dtype);
                    unet.set_lora_enabled(true);
                    Ok(per_sample_mse(&pred?, &noise)?)
                };
                let (loss, accuracy) = objective.loss(b, &errors, reference)?;
                // each micro-batch's loss divided by k: the step's gradient is their mean
                let grads = if k == 1 {
                    backprop.gradients(&loss)?
                } else {
                    backprop.gradients(&(&loss / k as f64)?)?
                };
                add_gradients(&mut pending, grads, opt.vars())?;
                loss_sum += loss.to_scalar::<f32>()? as f64;
                accuracy_sum += accuracy;
            }
            let grads =
                pending.ok_or_else(|| StageError::Failed("a step without micro-batches".into()))?;
            opt.step_clipped(grads, model.max_grad_norm(p))?;
            Ok((loss_sum / k as f64, accuracy_sum / k as f64))
        })?;
        tr.extra.push(ExactF64(accuracy));
        tr.record(loss, &lora_vars, &opt)?;
    }
    let accuracies = std::mem::take(&mut tr.extra);
    tr.finish(cx, p.name)?;
    let last: Vec<f64> = accuracies.iter().rev().take(20).map(|a| a.0).collect();
    if !last.is_empty() {
        cx.metric(
            objective.accuracy_metric(),
            last.iter().sum::<f64>() / last.len() as f64,
        );
    }
    let path = cx.out_dir().join("lora.safetensors");
    unet.save_lora(&path).at(&path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, RgbImage};

    fn pair(a: u8, b: u8, labels: [f64; 2]) -> Pair {
        let px = |v| RgbImage::from_pixel(1, 1, Rgb([v, v, v]));
        Pair {
            caption: format!("{a}-{b}"),
            images: [px(a), px(b)],
            labels,
            num_example_per_prompt: 1.0,
        }
    }

    #[test]
    fn ties_are_dropped_and_the_preferred_image_comes_first() {
        let out = ordered(vec![
            pair(1, 2, [1.0, 0.0]),
            pair(3, 4, [0.5, 0.5]),
            pair(5, 6, [0.0, 1.0]),
        ]);
        let firsts: Vec<(String, u8, [f64; 2])> = out
            .iter()
            .map(|p| (p.caption.clone(), p.images[0].get_pixel(0, 0)[0], p.labels))
            .collect();
        assert_eq!(
            firsts,
            [
                ("1-2".to_string(), 1, [1.0, 0.0]),
                ("5-6".to_string(), 6, [1.0, 0.0])
            ]
        );
    }
}
