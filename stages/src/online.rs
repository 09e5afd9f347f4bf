//! What the online methods share (D3PO, DDPO): rolling the LoRA policy out with DDIM(η) and CFG
//! while recording every transition and its log-probability under the sampling policy,
//! rewarding the final images with the in-world PickScore analogue, and re-scoring recorded
//! transitions under the policy or the frozen reference (the LoRA switched off).

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use image::RgbImage;
use spo_core::StageContext;
use spo_diffusion::{Ddim, NoiseSchedule, SchedulerConfig, UNet2DConditionModel};
use spo_nn::{AdamW, SeededRng};

use crate::clip_train::WorldClip;
use crate::error::Result;
use crate::inworld::{Conditioning, InWorldClip, device, lora_policy};
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
    /// The models as the rollout and training helpers take them.
    pub fn policy(&self) -> Policy<'_> {
        Policy {
            unet: &self.unet,
            ddim: &self.ddim,
            reward: &self.reward,
            dev: &self.dev,
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
    let reward = WorldClip::load(cx.input_of_kind("pickscore-train")?, &dev)?;
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
    pub unet: &'a UNet2DConditionModel,
    pub ddim: &'a Ddim,
    pub reward: &'a WorldClip,
    pub dev: &'a Device,
}

/// One denoising step of every chain: `(n, …)` states before and after, and the log-probability
/// `(n,)` of the step under the policy that sampled it.
pub(crate) struct Step {
    pub x: Tensor,
    pub t: usize,
    pub next: Tensor,
    pub logp: Tensor,
}

/// A batch of chains rolled out to the end.
pub(crate) struct Chains {
    pub steps: Vec<Step>,
    pub images: Vec<RgbImage>,
}

impl Chains {
    /// Every transition `(step index, chain index)` of the first `chains` chains, in a random
    /// order drawn from `rng`: the order a round trains them in.
    pub fn shuffled(&self, chains: usize, rng: &mut SeededRng) -> Vec<(usize, usize)> {
        let all: Vec<(usize, usize)> = (0..self.steps.len())
            .flat_map(|s| (0..chains).map(move |i| (s, i)))
            .collect();
        rng.permutation(all.len())
            .into_iter()
            .map(|k| all[k])
            .collect()
    }

    /// The recorded tensor `which` of the transitions `rows`, one row each, stacked.
    pub fn gather(&self, rows: &[(usize, usize)], which: fn(&Step) -> &Tensor) -> Result<Tensor> {
        let parts: Vec<Tensor> = rows
            .iter()
            .map(|&(s, i)| which(&self.steps[s]).narrow(0, i, 1))
            .collect::<candle_core::Result<_>>()?;
        Ok(Tensor::cat(&parts, 0)?)
    }
}

impl Policy<'_> {
    /// Rolls the chains starting at `x_t` (one row per entry of `cond`) out to clean images,
    /// drawing each step's noise from `rng`.
    pub fn roll_out(
        &self,
        cond: &Conditioning,
        mut x: Tensor,
        cfg: f64,
        rng: &mut SeededRng,
    ) -> Result<Chains> {
        let n = x.dim(0)?;
        let mut steps = Vec::with_capacity(self.ddim.timesteps().len());
        for &t in self.ddim.timesteps() {
            let ts = vec![t; n];
            let eps = cond.guided_eps(self.unet, &x, &ts, cfg)?.detach();
            let z = rng.normal(x.shape(), 0.0, 1.0, DType::F32, self.dev)?;
            let transition = self.ddim.transition(&eps, &ts, &x)?;
            let next = transition.sample(&z)?;
            let logp = transition.log_prob(&next)?.detach();
            steps.push(Step {
                x,
                t,
                next: next.clone(),
                logp,
            });
            x = next;
        }
        let images = tensor_to_images(&x.clamp(-1f32, 1f32)?)?;
        Ok(Chains { steps, images })
    }

    /// The PickScore analogue of each image with its prompt: the online methods' reward.
    pub fn rewards(&self, images: &[RgbImage], texts: &[&str]) -> Result<Vec<f64>> {
        pickscores(self.reward, &images.iter().collect::<Vec<_>>(), texts)
    }

    /// The log-probabilities `(m,)` of the recorded transitions `rows` (step index, chain index)
    /// under the policy (`lora`) or the frozen reference, guided as in sampling.
    pub fn log_probs(
        &self,
        cond: &Conditioning,
        chains: &Chains,
        rows: &[(usize, usize)],
        cfg: f64,
        lora: bool,
    ) -> Result<Tensor> {
        let (x, next) = (
            chains.gather(rows, |s| &s.x)?,
            chains.gather(rows, |s| &s.next)?,
        );
        let ts: Vec<usize> = rows.iter().map(|&(s, _)| chains.steps[s].t).collect();
        let idx: Vec<u32> = rows.iter().map(|&(_, i)| i as u32).collect();
        let ctx = cond.select(&Tensor::from_vec(idx, rows.len(), self.dev)?)?;
        self.unet.set_lora_enabled(lora);
        let eps = ctx.guided_eps(self.unet, &x, &ts, cfg)?;
        let eps = if lora { eps } else { eps.detach() };
        let logp = self.ddim.transition(&eps, &ts, &x)?.log_prob(&next);
        self.unet.set_lora_enabled(true);
        Ok(logp?)
    }
}
