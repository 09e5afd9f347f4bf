//! `ddpo`: DDPO (Black et al. 2024; next-wave A.3), the policy-gradient baseline of Table 2.
//!
//! Each round rolls `per_prompt` chains out for each of its prompts (DDIM η, CFG), rewards the
//! final images with the in-world PickScore analogue (the reward of D3PO's runs), turns the
//! rewards into advantages per prompt (DDPO's tracker: the prompt's last `buffer` rewards once
//! it has `min_count`, the whole batch before), and trains every transition with the PPO-clipped
//! ratio against the policy that sampled it: `spo_methods::ddpo`.
//!
//! Given a diffusers pipeline (a `hub` cell), a `prompts` cell and PickScore's released folder
//! instead of the in-world inputs, the same rounds run in the VAE's latent space with PickScore
//! on the decoded images as the reward (`crate::online`).

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};
use candle_nn::VarMap;
use spo_core::{ParamSpec, StageContext, StageError, StageKind};
use spo_methods::ddpo::{PerPromptStats, Ppo};
use spo_nn::{AdamW, SeededRng};

use crate::checkpoint::ExactF64;
use crate::error::Result;
use crate::inworld::on_cores;
use crate::online::{self, Models, Policy, RealRun};
use crate::real::Precision;
use crate::training::Trainer;
use spo_methods::online::Chains;
use spo_methods::spo::Denoiser;

spo_core::stage_params! {
    /// The params of `ddpo`.
    pub struct DdpoParams {
        /// sampling + training rounds
        rounds: usize = int(12).range(0.0, 1e6),
        /// prompts per round
        prompts: usize = int(4).range(1.0, 4096.0),
        /// chains per prompt and round
        per_prompt: usize = int(2).range(1.0, 256.0),
        /// DDIM steps (the d3po repository's DDPO setting: 20)
        steps: usize = int(20).range(2.0, 1000.0),
        eta: f64 = float(1.0).range(0.01, 1.0),
        cfg: f64 = float(5.0).range(1.0, 100.0),
        /// PPO's ratio clip (DDPO's 1e-4)
        clip_range: f64 = float(1e-4).range(0.0, 1.0),
        /// advantages are clipped to ± this (DDPO's 5)
        adv_clip_max: f64 = float(5.0).range(0.0, 1e6),
        /// rewards kept per prompt for its statistics (DDPO's 16)
        buffer: usize = int(16).range(1.0, 1e6),
        /// rewards a prompt needs before its own statistics replace the batch's (DDPO's 16)
        min_count: usize = int(16).range(1.0, 1e6),
        /// transitions per optimizer step
        train_batch: usize = int(16).range(1.0, 4096.0),
        /// the in-world SPO's, for LoRA (DDPO's 3e-4 is for full batches of 256 samples)
        lr: f64 = float(5e-4).range(1e-8, 1.0),
        /// LoRA rank (alpha = rank)
        rank: usize = int(4).range(1.0, 256.0),
        /// rounds between checkpoints
        checkpoint_every: usize = int(2).range(1.0, 1e6),
        /// snapshots of the LoRA kept at evenly spaced rounds for the `curve` kind (0: none)
        snapshots: usize = int(4).range(0.0, 1000.0),
        /// on real weights: the frozen weights' dtype (the LoRA and AdamW's state stay f32; the
        /// in-world models always run f32)
        precision: Precision = choice_of(Precision::F16),
        /// on real weights: recompute the UNet layer by layer in the backward instead of
        /// keeping its graph (docs/real-weights.md "Device, precision and memory")
        gradient_checkpointing: bool = bool(true),
        /// on real weights: latents per UNet call in the rollouts (and in training when
        /// checkpointing) and per VAE decode
        micro_batch: usize = int(8).range(1.0, 4096.0),
        /// on real weights: the LoRA's gradient clipped to this global norm before each step
        /// (DDPO's 1.0; 0: off)
        max_grad_norm: f64 = float(1.0).range(0.0, 1e6),
    }
}

/// The `ddpo` stage kind.
pub struct Ddpo;

impl StageKind for Ddpo {
    fn name(&self) -> &'static str {
        "ddpo"
    }
    fn version(&self) -> u32 {
        // 2: LoRA snapshots for the `curve` kind; the LoRA and logs are unchanged.
        2
    }
    fn summary(&self) -> &'static str {
        "DDPO fine-tuning with LoRA: PPO-clipped policy gradient on the PickScore analogue's reward, advantages per prompt (needs world, clip-pretrain, base-pretrain, pickscore-train; on real weights: a hub pipeline, prompts and PickScore's folder)"
    }
    fn params(&self) -> Vec<ParamSpec> {
        DdpoParams::specs()
    }
    fn seeded(&self) -> bool {
        true
    }
    fn run(&self, cx: &mut StageContext) -> Result<(), StageError> {
        Ok(run(cx)?)
    }
}

/// What a checkpoint keeps besides the weights: the tracker's buffers and each round's mean
/// reward, exactly.
#[derive(Default, Clone, serde::Serialize, serde::Deserialize)]
struct DdpoState {
    buffers: BTreeMap<String, Vec<ExactF64>>,
    rewards: Vec<ExactF64>,
}

/// Trains every recorded transition once, in a random order, `train_batch` at a time; returns
/// the mean loss.
#[allow(clippy::too_many_arguments)]
fn train_round<D: Denoiser>(
    m: &Policy<D>,
    p: &DdpoParams,
    cond: &D::Prompts,
    chains: &Chains,
    advantages: &[f64],
    opt: &mut AdamW,
    rng: &mut SeededRng,
) -> Result<f64> {
    let ppo = Ppo {
        clip_range: p.clip_range,
        adv_clip_max: p.adv_clip_max,
    };
    let order = chains.shuffled(advantages.len(), rng);
    let (mut sum, mut count) = (0.0, 0usize);
    for chunk in order.chunks(p.train_batch) {
        let c = chunk.len();
        let (lp, backprop) = m.policy_log_probs(cond, chains, chunk)?;
        let sampled = chains.gather(chunk, |s| &s.logp)?;
        let adv: Vec<f32> = chunk.iter().map(|&(_, i)| advantages[i] as f32).collect();
        let adv = Tensor::from_vec(adv, c, m.den.device())?;
        let loss = ppo.loss(&lp, &sampled, &adv)?;
        opt.step_clipped(backprop.gradients(&loss)?, m.max_grad_norm)?;
        sum += loss.to_scalar::<f32>()? as f64 * c as f64;
        count += c;
    }
    Ok(sum / count.max(1) as f64)
}

/// Computes one cell of this kind.
fn run(cx: &mut StageContext) -> Result<()> {
    let p = DdpoParams::from_params(cx.params())?;
    let seed = cx.seed().unwrap_or(0);
    let run = RealRun {
        precision: p.precision,
        checkpointing: p.gradient_checkpointing,
        micro_batch: p.micro_batch,
        max_grad_norm: p.max_grad_norm,
        // a step's transitions
        train_latents: p.train_batch,
    };
    let (models, mut lora_vars, mut opt) =
        online::setup(cx, (p.rank, seed, p.lr), (p.steps, p.eta), run)?;
    let pool = models.pool();
    let state = (&mut lora_vars, &mut opt);
    match &models {
        Models::World(o) => train(cx, &p, seed, &o.policy(p.cfg), &pool, &models, state),
        Models::Real(o) => train(cx, &p, seed, &o.policy(p.cfg), &pool, &models, state),
    }
}

/// The rounds of a cell, checkpointed; then the metrics and the LoRA.
fn train<D: Denoiser + Sync>(
    cx: &mut StageContext,
    p: &DdpoParams,
    seed: u64,
    policy: &Policy<D>,
    pool: &[&str],
    source: &Models,
    (lora_vars, opt): (&mut VarMap, &mut AdamW),
) -> Result<()> {
    let mut tr: Trainer<DdpoState> = Trainer::start(
        cx,
        "ddpo",
        p.rounds,
        p.checkpoint_every,
        seed,
        lora_vars,
        opt,
    )?;
    tr.keep_snapshots(p.snapshots, |path| source.save_lora(path));
    let mut stats = PerPromptStats::with_buffers(
        p.buffer,
        p.min_count,
        tr.extra
            .buffers
            .iter()
            .map(|(k, v)| (k.clone(), v.iter().map(|x| x.0).collect())),
    );
    while tr.step < p.rounds {
        let texts: Vec<&str> = tr
            .rng
            .indices(p.prompts, pool.len())
            .into_iter()
            .flat_map(|i| std::iter::repeat_n(pool[i], p.per_prompt))
            .collect();
        let rng = &mut tr.rng;
        let (loss, reward_mean) = on_cores(cx.threads(), || {
            let cond = policy.den.encode(&texts)?;
            let size = policy.den.sample_size();
            let shape = (texts.len(), policy.den.channels(), size, size);
            let x_t = rng.normal(shape, 0.0, 1.0, DType::F32, policy.den.device())?;
            let (chains, images) = policy.roll_out(&cond, x_t, rng)?;
            let rewards = policy.rewards(&images, &texts)?;
            let advantages = stats.advantages(&texts, &rewards);
            let loss = train_round(policy, p, &cond, &chains, &advantages, opt, rng)?;
            Ok((loss, rewards.iter().sum::<f64>() / rewards.len() as f64))
        })?;
        tr.extra.rewards.push(ExactF64(reward_mean));
        tr.extra.buffers = stats
            .buffers()
            .map(|(k, v)| (k.to_owned(), v.into_iter().map(ExactF64).collect()))
            .collect();
        tr.record(loss, lora_vars, opt)?;
    }
    let rewards = std::mem::take(&mut tr.extra.rewards);
    tr.finish(cx, "ddpo")?;
    if let (Some(first), Some(last)) = (rewards.first(), rewards.last()) {
        cx.metric("reward_first_round", first.0);
        cx.metric("reward_last_round", last.0);
    }
    source.save_lora(&cx.out_dir().join("lora.safetensors"))
}
