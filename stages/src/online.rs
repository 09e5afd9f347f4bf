//! What the online methods share (D3PO, DDPO): their inputs loaded, the LoRA policy with CFG
//! handed to the library's rollouts (`spo_methods::online`: every transition recorded with its
//! log-probability, re-scored under the policy or the frozen reference), and the final images
//! rewarded with the in-world PickScore analogue.

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use image::RgbImage;
use spo_core::{StageContext, StageError};
use spo_diffusion::{Ddim, NoiseSchedule, SchedulerConfig, UNet2DConditionModel};
use spo_methods::online::{self, Chains};
use spo_nn::{AdamW, SeededRng};

use crate::clip_train::WorldClip;
use crate::error::Result;
use crate::inworld::{Conditioning, GuidedUnet, InWorldClip, device, lora_policy};
use crate::score::pickscores;
use crate::tensors::tensor_to_images;
use crate::worlddata::WorldData;

/// What an online method's cell samples and rewards with: its inputs loaded, the LoRA policy's
/// model and the sampler.
pub(crate) struct Online {
    pub world: WorldData,
    pub text: InWorldClip,
    pub reward: WorldClip,
    pub unet: UNet2DConditionModel,
    pub ddim: Ddim,
    pub dev: Device,
}

impl Online {
    /// The models as the rollout and training helpers take them, guided at `cfg`.
    pub fn policy(&self, cfg: f64) -> Policy<'_> {
        Policy {
            den: GuidedUnet {
                unet: &self.unet,
                text: &self.text,
                cfg,
                dev: &self.dev,
            },
            ddim: &self.ddim,
            reward: &self.reward,
        }
    }
}

/// Loads an online method's inputs (world, clip-pretrain, base-pretrain, pickscore-train) and
/// builds its LoRA policy (rank, seed, learning rate; weight decay 1e-4, as SPO's) and a DDIM
/// sampler of `steps` steps and stochasticity `eta`; the adapters' var map and their optimizer
/// come apart, for the trainer to checkpoint.
pub(crate) fn setup(
    cx: &StageContext,
    rank: usize,
    seed: u64,
    lr: f64,
    steps: usize,
    eta: f64,
) -> Result<(Online, VarMap, AdamW)> {
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
    Ok((online, lora_vars, opt))
}

/// The models an online method samples, rewards and trains with.
pub(crate) struct Policy<'a> {
    pub den: GuidedUnet<'a>,
    pub ddim: &'a Ddim,
    pub reward: &'a WorldClip,
}

impl Policy<'_> {
    /// Rolls the chains starting at `x_t` (one row per prompt of `cond`) out
    /// ([`spo_methods::online::roll_out`]); the chains and their final images.
    pub fn roll_out(
        &self,
        cond: &Conditioning,
        x: Tensor,
        rng: &mut SeededRng,
    ) -> Result<(Chains, Vec<RgbImage>)> {
        let chains = online::roll_out(&self.den, self.ddim, cond, x, rng)?;
        let images = tensor_to_images(&chains.last.clamp(-1f32, 1f32)?)?;
        Ok((chains, images))
    }

    /// The PickScore analogue of each image with its prompt: the online methods' reward.
    /// A reward that is not a number (weights holding a NaN, say) is an error naming the prompt.
    pub fn rewards(&self, images: &[RgbImage], texts: &[&str]) -> Result<Vec<f64>> {
        let rewards = pickscores(self.reward, &images.iter().collect::<Vec<_>>(), texts)?;
        if let Some((r, text)) = rewards.iter().zip(texts).find(|(r, _)| !r.is_finite()) {
            return Err(StageError::Failed(format!(
                "the reward model (the PickScore analogue) gave {r} for the prompt \"{text}\"; \
                 nothing was stored (are its weights intact?)"
            ))
            .into());
        }
        Ok(rewards)
    }

    /// The log-probabilities of the recorded transitions `rows` under the policy or the
    /// frozen reference ([`spo_methods::online::log_probs`]).
    pub fn log_probs(
        &self,
        cond: &Conditioning,
        chains: &Chains,
        rows: &[(usize, usize)],
        policy: bool,
    ) -> Result<Tensor> {
        Ok(online::log_probs(
            &self.den, self.ddim, cond, chains, rows, policy,
        )?)
    }
}
