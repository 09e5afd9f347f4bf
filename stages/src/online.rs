//! What the online methods share (D3PO, DDPO): their inputs loaded — the in-world models, or a
//! real pipeline (a `hub` cell with model_index.json), its prompts and a released PickScore as
//! reward — the LoRA policy with CFG handed to the library's rollouts (`spo_methods::online`:
//! every transition recorded with its log-probability, re-scored under the policy or the frozen
//! reference), and the final images rewarded.

use std::path::Path;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use image::RgbImage;
use spo_clip::{Metric, ScoreOptions, Scorer};
use spo_core::{StageContext, StageError};
use spo_diffusion::{Ddim, DiffusersFolder, NoiseSchedule, SchedulerConfig, UNet2DConditionModel};
use spo_methods::online::{self, Chains};
use spo_methods::spo::{Backprop, Denoiser};
use spo_nn::{AdamW, SeededRng};
use spo_sd::{SdPolicy, StableDiffusion, Workload};

use crate::clip_train::WorldClip;
use crate::device::device;
use crate::error::{At, Result};
use crate::inworld::{GuidedUnet, InWorldClip, lora_policy};
use crate::real::{self, Precision};
use crate::score::pickscores;
use crate::tensors::{tensor_to_images, unit_tensor_to_images};
use crate::worlddata::WorldData;

/// An online method's models: in the emoji world, or a real diffusers pipeline.
pub(crate) enum Models {
    World(Box<Online>),
    Real(Box<RealOnline>),
}

/// The in-world models: world, text encoder, the PickScore analogue as reward, the LoRA base.
pub(crate) struct Online {
    pub world: WorldData,
    pub text: InWorldClip,
    pub reward: WorldClip,
    pub unet: UNet2DConditionModel,
    pub ddim: Ddim,
    pub dev: Device,
}

/// A real pipeline with its LoRA, the prompts of a `prompts` cell, a released PickScore.
pub(crate) struct RealOnline {
    pub sd: StableDiffusion,
    pub prompts: Vec<String>,
    pub reward: Scorer,
    pub ddim: Ddim,
    pub run: RealRun,
}

/// How an online method runs on real weights (its params; the in-world models run f32 with
/// their graph, in one call).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RealRun {
    pub precision: Precision,
    pub checkpointing: bool,
    /// Latents per UNet and VAE call.
    pub micro_batch: usize,
    /// Latents of one training step (transitions of both chains for D3PO), for the memory
    /// check.
    pub train_latents: usize,
    /// The LoRA's gradient is clipped to this global norm before each step (0: off).
    pub max_grad_norm: f64,
}

impl Models {
    /// The training prompts a round draws from.
    pub fn pool(&self) -> Vec<&str> {
        match self {
            Models::World(o) => o.world.train.iter().map(|p| p.text.as_str()).collect(),
            Models::Real(o) => o.prompts.iter().map(String::as_str).collect(),
        }
    }

    /// Saves the policy's LoRA at `path`.
    pub fn save_lora(&self, path: &Path) -> Result<()> {
        match self {
            Models::World(o) => o.unet.save_lora(path).at(path),
            Models::Real(o) => o.sd.unet().save_lora(path).at(path),
        }
    }
}

impl Online {
    /// The models as the rollout and training helpers take them, guided at `cfg`.
    pub fn policy(&self, cfg: f64) -> Policy<'_, GuidedUnet<'_>> {
        Policy {
            den: GuidedUnet {
                unet: &self.unet,
                text: &self.text,
                cfg,
                dev: &self.dev,
            },
            ddim: &self.ddim,
            reward: Reward::World(&self.reward),
            // the in-world runs were scaled without clipping
            max_grad_norm: None,
        }
    }
}

impl RealOnline {
    /// The models as the rollout and training helpers take them, guided at `cfg`.
    pub fn policy(&self, cfg: f64) -> Policy<'_, SdPolicy<'_>> {
        Policy {
            den: SdPolicy {
                sd: &self.sd,
                cfg,
                micro_batch: self.run.micro_batch,
                checkpointing: self.run.checkpointing,
            },
            ddim: &self.ddim,
            reward: Reward::Real(&self.sd, &self.reward, self.run.micro_batch),
            max_grad_norm: (self.run.max_grad_norm > 0.0).then_some(self.run.max_grad_norm),
        }
    }
}

/// Loads an online method's inputs and builds its LoRA policy (rank, seed, learning rate;
/// weight decay 1e-4, as SPO's) and a DDIM sampler of `steps` steps and stochasticity `eta`; the
/// adapters' var map and their optimizer come apart, for the trainer to checkpoint. In the
/// world: world, clip-pretrain, base-pretrain, pickscore-train. On real weights: a pipeline
/// (`hub`), a `prompts` cell and PickScore's released folder (config.json + weights), run as
/// `run` says once the memory check passes.
pub(crate) fn setup(
    cx: &mut StageContext,
    (rank, seed, lr): (usize, u64, f64),
    (steps, eta): (usize, f64),
    run: RealRun,
) -> Result<(Models, VarMap, AdamW)> {
    if real::has_pipeline(cx) {
        return setup_real(cx, (rank, seed, lr), (steps, eta), run);
    }
    let dev = device();
    let world = WorldData::load(cx.input_of_kind("world")?)?;
    let text = InWorldClip::load(cx.input_of_kind("clip-pretrain")?, &dev)?;
    let reward_input = cx.input_of_kind("pickscore-train")?;
    let reward = WorldClip::load(reward_input, &dev)?;
    let side = reward.model.config().vision_config.image_size;
    if side != world.canvas as usize {
        return Err(StageError::Input {
            need: reward_input.stage.clone(),
            message: format!(
                "the reward model takes {side}×{side} images, but the world draws {c}×{c} \
                 (train the PickScore analogue on this method's world)",
                c = world.canvas
            ),
        }
        .into());
    }
    let (unet, lora_vars, opt) = lora_policy(
        cx.input_of_kind("base-pretrain")?,
        rank,
        seed,
        lr,
        1e-4,
        &dev,
    )?;
    let ddim = Ddim::new(NoiseSchedule::new(SchedulerConfig::sd15())?, steps, eta)?;
    let online = Online {
        world,
        text,
        reward,
        unet,
        ddim,
        dev,
    };
    Ok((Models::World(Box::new(online)), lora_vars, opt))
}

fn setup_real(
    cx: &mut StageContext,
    (rank, seed, lr): (usize, u64, f64),
    (steps, eta): (usize, f64),
    run: RealRun,
) -> Result<(Models, VarMap, AdamW)> {
    let dev = device();
    let pipeline = real::pipeline_input(cx)?.clone();
    let prompts = real::prompts(cx)?;
    let reward_dir = real::weights_input(cx, &pipeline, "config.json")
        .map(|i| i.dir.clone())
        .ok_or_else(|| StageError::Input {
            need: "pickscore".into(),
            message: format!(
                "stage `{}` needs the reward model: a `hub` stage of PickScore's folder (config.json and its weights)",
                cx.stage()
            ),
        })?;
    let dtype = run.precision.dtype(&dev)?;
    let work = Workload::Train {
        batch: run.train_latents,
        rollout_batch: run.micro_batch,
        rank,
        checkpointing: run.checkpointing,
        guided: true,
    };
    // PickScore runs in f32: about its weight files' size
    let reward_bytes = real::weight_file_bytes(&reward_dir)?;
    real::check_memory(
        cx,
        &DiffusersFolder::open(&pipeline.dir)?,
        dtype,
        work,
        reward_bytes,
    )?;
    let reward = Scorer::load(
        Metric::PickScore,
        &reward_dir,
        &ScoreOptions::default(),
        &dev,
    )
    .at(&reward_dir)?;
    let (sd, lora_vars, opt) = real::lora_pipeline(&pipeline.dir, dtype, rank, seed, lr, 1e-4)?;
    let ddim = Ddim::new(NoiseSchedule::new(sd.scheduler().clone())?, steps, eta)?;
    let real = RealOnline {
        sd,
        prompts,
        reward,
        ddim,
        run,
    };
    Ok((Models::Real(Box::new(real)), lora_vars, opt))
}

/// What rewards a rollout's final samples.
pub(crate) enum Reward<'a> {
    /// The in-world PickScore analogue on the pixels.
    World(&'a WorldClip),
    /// A released PickScore on the VAE-decoded latents, decoded this many at a time.
    Real(&'a StableDiffusion, &'a Scorer, usize),
}

/// The models an online method samples, rewards and trains with.
pub(crate) struct Policy<'a, D> {
    pub den: D,
    pub ddim: &'a Ddim,
    pub reward: Reward<'a>,
    /// The global norm the LoRA's gradient is clipped to before each step.
    pub max_grad_norm: Option<f64>,
}

impl<D: Denoiser> Policy<'_, D> {
    /// Rolls the chains starting at `x_t` (one row per prompt of `cond`) out
    /// ([`spo_methods::online::roll_out`]); the chains and their final images.
    pub fn roll_out(
        &self,
        cond: &D::Prompts,
        x: Tensor,
        rng: &mut SeededRng,
    ) -> Result<(Chains, Vec<RgbImage>)> {
        let chains = online::roll_out(&self.den, self.ddim, cond, x, rng)?;
        let images = match self.reward {
            Reward::World(_) => tensor_to_images(&chains.last.clamp(-1f32, 1f32)?)?,
            Reward::Real(sd, _, micro_batch) => {
                let n = chains.last.dim(0)?;
                let mut images = Vec::with_capacity(n);
                for start in (0..n).step_by(micro_batch.max(1)) {
                    let part = chains.last.narrow(0, start, micro_batch.min(n - start))?;
                    images.extend(unit_tensor_to_images(&sd.decode(&part)?)?);
                }
                images
            }
        };
        Ok((chains, images))
    }

    /// The reward of each image with its prompt. A reward that is not a number (weights
    /// holding a NaN, say) is an error naming the prompt.
    pub fn rewards(&self, images: &[RgbImage], texts: &[&str]) -> Result<Vec<f64>> {
        let (rewards, name) = match self.reward {
            Reward::World(clip) => (
                pickscores(clip, &images.iter().collect::<Vec<_>>(), texts)?,
                "the PickScore analogue",
            ),
            Reward::Real(_, scorer, _) => (scorer.score(images, texts)?, "PickScore"),
        };
        if let Some((r, text)) = rewards.iter().zip(texts).find(|(r, _)| !r.is_finite()) {
            return Err(StageError::Failed(format!(
                "the reward model ({name}) gave {r} for the prompt \"{text}\"; \
                 nothing was stored (are its weights intact?)"
            ))
            .into());
        }
        Ok(rewards)
    }

    /// The log-probabilities of the recorded transitions `rows` under the frozen reference
    /// ([`spo_methods::online::reference_log_probs`]).
    pub fn reference_log_probs(
        &self,
        cond: &D::Prompts,
        chains: &Chains,
        rows: &[(usize, usize)],
    ) -> Result<Tensor> {
        Ok(online::reference_log_probs(
            &self.den, self.ddim, cond, chains, rows,
        )?)
    }

    /// The log-probabilities of the recorded transitions `rows` under the policy, and how a
    /// loss built from them reaches the LoRA ([`spo_methods::online::policy_log_probs`]).
    pub fn policy_log_probs(
        &self,
        cond: &D::Prompts,
        chains: &Chains,
        rows: &[(usize, usize)],
    ) -> Result<(Tensor, Backprop<'_>)> {
        Ok(online::policy_log_probs(
            &self.den, self.ddim, cond, chains, rows,
        )?)
    }
}
