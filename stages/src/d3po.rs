//! `d3po`: D3PO (Yang et al. 2024; next-wave A.2), the online pairwise baseline of Table 2.
//!
//! Each round rolls every prompt out twice from the same x_T (independent step noise, DDIM η,
//! CFG), ranks the two final images with the in-world PickScore analogue (the reward model SPO's
//! authors gave D3PO; a tie gives no gradient), and trains every transition of both chains with
//! the clamped-ratio loss against the frozen reference (the LoRA switched off):
//! `spo_methods::ratio::ClampedRatio::labelled_pairs`.
//!
//! Given a diffusers pipeline (a `hub` cell), a `prompts` cell and PickScore's released folder
//! instead of the in-world inputs, the same rounds run in the VAE's latent space with PickScore
//! on the decoded images as the reward (`crate::online`).

use candle_core::{DType, Tensor};
use candle_nn::VarMap;
use spo_core::{ParamSpec, StageContext, StageError, StageKind};
use spo_methods::ratio::ClampedRatio;
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
    /// The params of `d3po`.
    pub struct D3poParams {
        /// sampling + training rounds
        rounds: usize = int(12).range(0.0, 1e6),
        /// prompts per round, each rolled out twice
        prompts: usize = int(4).range(1.0, 4096.0),
        /// DDIM steps (D3PO's 20)
        steps: usize = int(20).range(2.0, 1000.0),
        eta: f64 = float(1.0).range(0.01, 1.0),
        cfg: f64 = float(5.0).range(1.0, 100.0),
        /// β of the loss (D3PO's 0.1)
        beta: f64 = float(0.1).range(0.0, 1e4),
        /// ratio clamp [1 − ε, 1 + ε]
        clip_eps: f64 = float(0.1).range(0.0, 1.0),
        /// transition pairs per optimizer step
        train_batch: usize = int(16).range(1.0, 4096.0),
        /// the in-world SPO's, for LoRA (D3PO's 3e-5 is for its 10 × 2 samples per GPU and 400
        /// epochs)
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
        /// (D3PO's 1.0; 0: off)
        max_grad_norm: f64 = float(1.0).range(0.0, 1e6),
    }
}

/// The `d3po` stage kind.
pub struct D3po;

impl StageKind for D3po {
    fn name(&self) -> &'static str {
        "d3po"
    }
    fn version(&self) -> u32 {
        // 2: LoRA snapshots for the `curve` kind; the LoRA and logs are unchanged.
        2
    }
    fn summary(&self) -> &'static str {
        "D3PO fine-tuning with LoRA: two rollouts per prompt from one x_T, ranked by the PickScore analogue (needs world, clip-pretrain, base-pretrain, pickscore-train; on real weights: a hub pipeline, prompts and PickScore's folder)"
    }
    fn params(&self) -> Vec<ParamSpec> {
        D3poParams::specs()
    }
    fn seeded(&self) -> bool {
        true
    }
    fn run(&self, cx: &mut StageContext) -> Result<(), StageError> {
        Ok(run(cx)?)
    }
}

/// One round: both chains of every prompt (chain a's rows first) and their labels.
struct Round {
    chains: Chains,
    /// `(h_a, h_b)` per prompt.
    labels: Vec<(f64, f64)>,
    reward_mean: f64,
}

/// The label of a pair from its two rewards: the higher is preferred, a tie teaches nothing.
fn label(a: f64, b: f64) -> (f64, f64) {
    match a.total_cmp(&b) {
        std::cmp::Ordering::Greater => (1.0, -1.0),
        std::cmp::Ordering::Less => (-1.0, 1.0),
        std::cmp::Ordering::Equal => (0.0, 0.0),
    }
}

/// Rolls each of the `b` prompts out twice from one x_T and labels the pairs.
fn rollout<D: Denoiser>(
    m: &Policy<D>,
    cond: &D::Prompts,
    texts: &[&str],
    rng: &mut SeededRng,
) -> Result<Round> {
    let b = texts.len() / 2;
    let size = m.den.sample_size();
    let shape = (b, m.den.channels(), size, size);
    let x_t = rng.normal(shape, 0.0, 1.0, DType::F32, m.den.device())?;
    let (chains, images) = m.roll_out(cond, Tensor::cat(&[&x_t, &x_t], 0)?, rng)?;
    let rewards = m.rewards(&images, texts)?;
    let labels = (0..b).map(|i| label(rewards[i], rewards[b + i])).collect();
    Ok(Round {
        chains,
        labels,
        reward_mean: rewards.iter().sum::<f64>() / rewards.len() as f64,
    })
}

/// Trains every transition of the round's pairs once, in a random order, `train_batch` at a
/// time; returns the mean loss.
fn train_round<D: Denoiser>(
    m: &Policy<D>,
    p: &D3poParams,
    cond: &D::Prompts,
    r: &Round,
    opt: &mut AdamW,
    rng: &mut SeededRng,
) -> Result<f64> {
    let b = r.labels.len();
    let loss_fn = ClampedRatio {
        beta: p.beta,
        clip_eps: p.clip_eps,
    };
    // (step index, prompt index) of every transition pair: chain a's, whose twin is b + i
    let order = r.chains.shuffled(b, rng);
    let (mut sum, mut n) = (0.0, 0usize);
    for chunk in order.chunks(p.train_batch) {
        let c = chunk.len();
        // chain a's transitions, then chain b's
        let rows: Vec<(usize, usize)> = chunk
            .iter()
            .copied()
            .chain(chunk.iter().map(|&(s, i)| (s, b + i)))
            .collect();
        let lp_ref = m.reference_log_probs(cond, &r.chains, &rows)?;
        let (lp, backprop) = m.policy_log_probs(cond, &r.chains, &rows)?;
        let labels: Vec<(f64, f64)> = chunk.iter().map(|&(_, i)| r.labels[i]).collect();
        let loss = loss_fn.labelled_pairs(
            &lp.narrow(0, 0, c)?,
            &lp.narrow(0, c, c)?,
            &lp_ref.narrow(0, 0, c)?,
            &lp_ref.narrow(0, c, c)?,
            &labels,
        )?;
        opt.step_clipped(backprop.gradients(&loss)?, m.max_grad_norm)?;
        sum += loss.to_scalar::<f32>()? as f64 * c as f64;
        n += c;
    }
    Ok(sum / n.max(1) as f64)
}

/// Computes one cell of this kind.
fn run(cx: &mut StageContext) -> Result<()> {
    let p = D3poParams::from_params(cx.params())?;
    let seed = cx.seed().unwrap_or(0);
    let run = RealRun {
        precision: p.precision,
        checkpointing: p.gradient_checkpointing,
        micro_batch: p.micro_batch,
        max_grad_norm: p.max_grad_norm,
        // a step's transitions of both chains
        train_latents: 2 * p.train_batch,
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
    p: &D3poParams,
    seed: u64,
    models: &Policy<D>,
    pool: &[&str],
    source: &Models,
    (lora_vars, opt): (&mut VarMap, &mut AdamW),
) -> Result<()> {
    // per round: (reward mean, tie share), kept exactly across a resume
    let mut tr: Trainer<Vec<(ExactF64, ExactF64)>> = Trainer::start(
        cx,
        "d3po",
        p.rounds,
        p.checkpoint_every,
        seed,
        lora_vars,
        opt,
    )?;
    tr.keep_snapshots(p.snapshots, |path| source.save_lora(path));
    while tr.step < p.rounds {
        let texts: Vec<&str> = tr
            .rng
            .indices(p.prompts, pool.len())
            .into_iter()
            .map(|i| pool[i])
            .collect();
        let rng = &mut tr.rng;
        let (loss, reward_mean, ties) = on_cores(cx.threads(), || {
            let both = [texts.as_slice(), texts.as_slice()].concat();
            let cond = models.den.encode(&both)?;
            let r = rollout(models, &cond, &both, rng)?;
            let loss = train_round(models, p, &cond, &r, opt, rng)?;
            let ties = r.labels.iter().filter(|l| l.0 == 0.0).count() as f64;
            Ok((loss, r.reward_mean, ties / r.labels.len() as f64))
        })?;
        tr.extra.push((ExactF64(reward_mean), ExactF64(ties)));
        tr.record(loss, lora_vars, opt)?;
    }
    let log = std::mem::take(&mut tr.extra);
    tr.finish(cx, "d3po")?;
    if let (Some(first), Some(last)) = (log.first(), log.last()) {
        cx.metric("reward_first_round", first.0.0);
        cx.metric("reward_last_round", last.0.0);
        cx.metric(
            "tie_rate",
            log.iter().map(|l| l.1.0).sum::<f64>() / log.len() as f64,
        );
    }
    source.save_lora(&cx.out_dir().join("lora.safetensors"))
}

#[cfg(test)]
mod tests {
    use super::label;

    #[test]
    fn the_higher_reward_is_preferred_and_a_tie_teaches_nothing() {
        assert_eq!(label(2.0, 1.0), (1.0, -1.0));
        assert_eq!(label(1.0, 2.0), (-1.0, 1.0));
        assert_eq!(label(1.5, 1.5), (0.0, 0.0));
    }
}
