//! `spo`: step-by-step preference optimisation of the base model with LoRA (spo-reference §2):
//! loads the world, the text encoder, the base with a LoRA policy and the SPM, runs the rounds of
//! `spo_methods::spo` through `Trainer` (checkpointed, resumable) and writes the LoRA and a log.
//!
//! Each round samples prompts and rolls the current policy out with DDIM(η) and CFG. Inside the
//! trained timestep range, every step branches into a pool of `k` candidates from the same x_t;
//! after `j` steps (j = 1: SPO; j > 1: MSPO) the SPM scores each candidate's x₀-prediction at
//! its timestep (the final clean candidates at t = 0), the best and worst (or a random pair)
//! form a training pair when their 2-way softmax margin exceeds the threshold, and the chain
//! continues from a random candidate (or the winner / loser, for Table 4). The stored pairs then
//! train the LoRA policy, once each, with the clamped-ratio DPO loss against the LoRA-disabled
//! reference: L = −log σ(β·log r̄_w − β·log r̄_l), r̄ = clamp(p_θ/p_ref, 1 − ε, 1 + ε).
//!
//! Beyond the paper, `judge` hands the pools to the world's oracles instead of the SPM
//! (`crate::oracle_judge`), to measure what SPO does with a judge that ranks them right; the
//! round log's `spm_score_mean` is then that judge's mean score.

use std::path::Path;
use std::sync::Arc;

use arrow_array::{Float64Array, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use spo_clip::Spm;
use spo_core::{ParamSpec, StageContext, StageError, StageKind};
use spo_diffusion::{Ddim, NoiseSchedule, SchedulerConfig};
use spo_methods::pairs::{self, PairSelection};
use spo_methods::ratio::ClampedRatio;
use spo_methods::spo::{Denoiser, RoundResult, SpoConfig, StepJudge, rollout, train_round};
use spo_nn::AdamW;

use crate::checkpoint::exact_f64;
use crate::device::device;
use crate::error::{At, Result};
use crate::gradspo::{Ema, GradSpo};
use crate::inworld::{GuidedUnet, InWorldClip, lora_policy, on_cores};
use crate::oracle_judge::OracleJudge;
use crate::training::Trainer;
use crate::vocab::Vocab;
use crate::world_parquet::{col, write_table};
use crate::worlddata::{WorldData, world_annotator};

spo_core::param_choice! {
    /// The `continuation` param: [`pairs::Continuation`]'s names.
    pub enum Continuation { Random = "random", Win = "win", Lose = "lose" }
}

spo_core::param_choice! {
    /// The `pair` param: [`pairs::PairChoice`]'s names.
    pub enum PairChoice { BestWorst = "best-worst", Random = "random" }
}

spo_core::param_choice! {
    /// The `judge` param: the step-aware judge that scores a pool's candidates.
    pub enum JudgeChoice { Spm = "spm", Oracle = "oracle", OracleDetail = "oracle-detail" }
}

impl From<Continuation> for pairs::Continuation {
    fn from(c: Continuation) -> Self {
        match c {
            Continuation::Random => pairs::Continuation::Random,
            Continuation::Win => pairs::Continuation::Win,
            Continuation::Lose => pairs::Continuation::Lose,
        }
    }
}

impl From<PairChoice> for pairs::PairChoice {
    fn from(c: PairChoice) -> Self {
        match c {
            PairChoice::BestWorst => pairs::PairChoice::BestWorst,
            PairChoice::Random => pairs::PairChoice::Random,
        }
    }
}

spo_core::stage_params! {
    /// The params of `spo`.
    pub struct SpoParams {
        /// candidates per pool (Table 6)
        k: usize = int(4).range(2.0, 16.0),
        /// steps per pool before scoring; > 1 is MSPO (Table 7)
        j: usize = int(1).range(1.0, 20.0),
        /// transitions from t in [lo, hi] branch and train (Table 8); [0, 751] = plain DDIM for
        /// the first 4 of 20 steps
        t_range: Vec<usize> = int_list(&[0, 751]).len(2).range(0.0, 1000.0),
        /// which candidate the chain continues from (Table 4)
        continuation: Continuation = choice_of(Continuation::Random),
        /// which two candidates form the pair (Table 9)
        pair: PairChoice = choice_of(PairChoice::BestWorst),
        /// keep a pair when p_win − p_lose exceeds this
        threshold: f64 = float(0.3).range(0.0, 1.0),
        /// who judges a pool: the SPM (the paper), the world's annotator without its noise on
        /// each candidate's x̂₀ (what a perfectly trained SPM would learn), or the graded
        /// detail oracle alone on it
        judge: JudgeChoice = choice_of(JudgeChoice::Spm),
        /// the oracle judge's score per unit of utility (100: CLIP's logit scale, as if a
        /// utility of 1 were a cosine of 1)
        oracle_scale: f64 = float(100.0).range(0.0, 1e6),
        beta: f64 = float(10.0).range(0.0, 1e4),
        /// ratio clamp [1 − ε, 1 + ε]
        clip_eps: f64 = float(0.1).range(0.0, 1.0),
        /// sampling + training rounds
        rounds: usize = int(12).range(0.0, 1e6),
        /// prompts per round
        prompts: usize = int(6).range(1.0, 4096.0),
        /// pairs per optimizer step
        train_batch: usize = int(16).range(1.0, 4096.0),
        /// passes over each round's pairs (the paper: 1, each pair used once)
        epochs: usize = int(1).range(1.0, 100.0),
        lr: f64 = float(5e-4).range(1e-8, 1.0),
        /// LoRA rank (alpha = rank)
        rank: usize = int(4).range(1.0, 256.0),
        /// DDIM steps
        steps: usize = int(20).range(2.0, 1000.0),
        eta: f64 = float(1.0).range(0.01, 1.0),
        cfg: f64 = float(5.0).range(1.0, 100.0),
        /// rounds between checkpoints
        checkpoint_every: usize = int(2).range(1.0, 1e6),
        /// snapshots of the LoRA kept at evenly spaced rounds for the `curve` kind (0: none)
        snapshots: usize = int(4).range(0.0, 1000.0),
    }
}

/// The `spo` stage kind.
pub struct SpoTrain;

impl StageKind for SpoTrain {
    fn name(&self) -> &'static str {
        "spo"
    }
    fn version(&self) -> u32 {
        // 4: LoRA snapshots (`snapshots/`, `snapshots.parquet`) for the `curve` kind; the
        //    LoRA and logs are unchanged.
        // 3: a ResNet block's GroupNorm–SiLU–conv is one fused op (last-bit changes).
        // 2: the fused CPU convolution, attention and linear ops (last-bit changes).
        4
    }
    fn summary(&self) -> &'static str {
        "SPO / MSPO fine-tuning with LoRA (needs world, clip-pretrain, base-pretrain, train-spm)"
    }
    fn params(&self) -> Vec<ParamSpec> {
        SpoParams::specs()
    }
    fn seeded(&self) -> bool {
        true
    }
    fn run(&self, cx: &mut StageContext) -> Result<(), StageError> {
        Ok(train(cx, None)?)
    }
}

/// Computes one cell of `spo`, or of `gradspo` with its settings.
pub(crate) fn train(cx: &mut StageContext, gradspo: Option<GradSpo>) -> Result<()> {
    let p = SpoParams::from_params(cx.params())?;
    if gradspo.is_some() {
        GradSpo::check_steps_per_pool(p.j)?;
    }
    let dev = device();
    let seed = cx.seed().unwrap_or(0);
    let world_input = cx.input_of_kind("world")?.clone();
    let world = WorldData::load(&world_input)?;
    let text = InWorldClip::load(cx.input_of_kind("clip-pretrain")?, &dev)?;
    let (spm, spm_vocab) = crate::spm::load(cx.input_of_kind("train-spm")?, &dev)?;
    let (unet, mut lora_vars, mut opt) = lora_policy(
        cx.input_of_kind("base-pretrain")?,
        p.rank,
        seed,
        p.lr,
        1e-4,
        &dev,
    )?;
    let ddim = Ddim::new(NoiseSchedule::new(SchedulerConfig::sd15())?, p.steps, p.eta)?;
    let cfg = SpoConfig {
        k: p.k,
        j: p.j,
        t_range: p.t_range[0]..=p.t_range[1],
        selection: PairSelection {
            pair: p.pair.into(),
            continuation: p.continuation.into(),
            threshold: p.threshold,
        },
        loss: ClampedRatio {
            beta: p.beta,
            clip_eps: p.clip_eps,
        },
        train_batch: p.train_batch,
        accumulate: 1,
        epochs: p.epochs,
        gradspo_scale: gradspo.map(|g| g.grad_scale),
    };
    // GradSPO rolls out with a moving average of the policy, checkpointed with it
    let ema = gradspo
        .map(|g| Ema::attach(&lora_vars, g.ema_decay))
        .transpose()?;
    let name = if gradspo.is_some() { "gradspo" } else { "spo" };
    let den = GuidedUnet {
        unet: &unet,
        text: &text,
        cfg: p.cfg,
        dev: &dev,
    };
    let spm_judge = SpmJudge {
        spm: &spm,
        vocab: &spm_vocab,
        dev: &dev,
    };
    let oracle = match p.judge {
        JudgeChoice::Spm => None,
        JudgeChoice::Oracle => Some(OracleJudge::utility(
            &world,
            world_annotator(&world_input)?,
            p.oracle_scale,
        )),
        JudgeChoice::OracleDetail => Some(OracleJudge::detail(&world, p.oracle_scale)),
    };
    let judge: &(dyn StepJudge + Sync) = match &oracle {
        Some(oracle) => oracle,
        None => &spm_judge,
    };
    let pool: Vec<&str> = world.train.iter().map(|p| p.text.as_str()).collect();
    let save_lora = |path: &Path| unet.save_lora(path).at(path);
    let rounds = Rounds {
        name,
        rounds: p.rounds,
        prompts: p.prompts,
        checkpoint_every: p.checkpoint_every,
        snapshots: p.snapshots,
        seed,
    };
    run_rounds(
        cx,
        &rounds,
        &pool,
        (&den, judge),
        (&ddim, &cfg),
        ema,
        (&mut lora_vars, &mut opt),
        &save_lora,
    )
}

/// What SPO's round loop needs besides the models.
pub(crate) struct Rounds<'a> {
    /// The kind's name (progress bar, checkpoint folder).
    pub name: &'a str,
    pub rounds: usize,
    /// Prompts per round, drawn from the pool.
    pub prompts: usize,
    pub checkpoint_every: usize,
    pub snapshots: usize,
    pub seed: u64,
}

/// SPO's rounds, checkpointed and resumable through [`Trainer`]: each draws `r.prompts` of
/// `pool`, rolls the policy out (GradSPO: its moving average) with `judge` on the pools, and
/// trains on the pairs; then writes the loss and round logs, the metrics and
/// `lora.safetensors` (with `save_lora`, which also writes the snapshots).
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_rounds<D: Denoiser + Sync>(
    cx: &mut StageContext,
    r: &Rounds,
    pool: &[&str],
    (den, judge): (&D, &(dyn StepJudge + Sync)),
    (ddim, cfg): (&Ddim, &SpoConfig),
    mut ema: Option<Ema>,
    (lora_vars, opt): (&mut VarMap, &mut AdamW),
    save_lora: &(dyn Fn(&Path) -> Result<()> + Sync),
) -> Result<()> {
    let mut tr: Trainer<Vec<RoundLog>> = Trainer::start(
        cx,
        r.name,
        r.rounds,
        r.checkpoint_every,
        r.seed,
        lora_vars,
        opt,
    )?;
    tr.keep_snapshots(r.snapshots, save_lora);
    while tr.step < r.rounds {
        // ---- sampling ----
        let texts: Vec<&str> = tr
            .rng
            .indices(r.prompts, pool.len())
            .into_iter()
            .map(|i| pool[i])
            .collect();
        let rng = &mut tr.rng;
        let ((pairs, stats), trained) = on_cores(cx.threads(), || {
            if let Some(ema) = ema.as_mut() {
                ema.swap_in()?;
            }
            let sampled = rollout(den, judge, ddim, cfg, &texts, rng)?;
            if let Some(ema) = ema.as_mut() {
                ema.swap_out()?;
            }
            // ---- training ----
            let mut after_step = || match ema.as_ref() {
                Some(ema) => ema.update().map_err(candle_core::Error::wrap),
                None => Ok(()),
            };
            let trained = train_round(den, ddim, cfg, &sampled.0, opt, &mut after_step, rng)?;
            Ok((sampled, trained))
        })?;
        let RoundResult {
            loss,
            ratio_win,
            ratio_lose,
        } = trained;
        tr.extra.push(RoundLog {
            round: tr.step as u64 + 1,
            loss,
            ratio_win,
            ratio_lose,
            pairs: pairs.len() as u64,
            valid_rate: stats.valid_rate,
            spm_mean: stats.mean_score,
        });
        // Rounds without a valid pair record the reference loss ln 2.
        tr.record(loss.unwrap_or(std::f64::consts::LN_2), lora_vars, opt)?;
    }
    let log = std::mem::take(&mut tr.extra);
    tr.finish(cx, r.name)?;
    write_rounds(cx, &log)?;
    if let Some(last) = log.last() {
        cx.metric(
            "valid_pair_rate",
            log.iter().map(|r| r.valid_rate).sum::<f64>() / log.len() as f64,
        );
        cx.metric("spm_score_last_round", last.spm_mean);
        cx.metric("pairs", log.iter().map(|r| r.pairs as f64).sum());
        // how far the policy moved from the reference on its own pairs: mean |r̄ − 1| of
        // the rounds' mean clamped ratios, winners and losers alike (0 for a round
        // without pairs, whose ratios are 1)
        cx.metric(
            "ratio_deviation",
            log.iter()
                .map(|r| ((r.ratio_win - 1.0).abs() + (r.ratio_lose - 1.0).abs()) / 2.0)
                .sum::<f64>()
                / log.len() as f64,
        );
    }
    let path = cx.out_dir().join("lora.safetensors");
    save_lora(&path)
}

/// The SPM as SPO's step-aware judge.
struct SpmJudge<'a> {
    spm: &'a Spm,
    vocab: &'a Vocab,
    dev: &'a Device,
}

impl StepJudge for SpmJudge<'_> {
    fn scores(&self, x0: &Tensor, texts: &[&str], t: usize) -> candle_core::Result<Vec<f64>> {
        let ids = self
            .vocab
            .batch(texts, self.dev)
            .map_err(candle_core::Error::wrap)?;
        let pixels = x0.clamp(-1f32, 1f32)?;
        self.spm.score(&pixels, &ids, &vec![t as f32; texts.len()])
    }
}

#[derive(Default, Clone, serde::Serialize, serde::Deserialize)]
struct RoundLog {
    round: u64,
    #[serde(with = "exact_f64::option")]
    loss: Option<f64>,
    #[serde(with = "exact_f64")]
    ratio_win: f64,
    #[serde(with = "exact_f64")]
    ratio_lose: f64,
    pairs: u64,
    #[serde(with = "exact_f64")]
    valid_rate: f64,
    #[serde(with = "exact_f64")]
    spm_mean: f64,
}

fn write_rounds(cx: &mut StageContext, log: &[RoundLog]) -> Result<()> {
    let f = |name: &str| Field::new(name, DataType::Float64, true);
    let schema = Arc::new(Schema::new(vec![
        Field::new("round", DataType::UInt64, false),
        f("loss"),
        f("ratio_win"),
        f("ratio_lose"),
        Field::new("pairs", DataType::UInt64, false),
        f("valid_pair_rate"),
        f("spm_score_mean"),
    ]));
    let cols = vec![
        col(UInt64Array::from(
            log.iter().map(|r| r.round).collect::<Vec<_>>(),
        )),
        col(Float64Array::from(
            log.iter().map(|r| r.loss).collect::<Vec<_>>(),
        )),
        col(Float64Array::from(
            log.iter().map(|r| r.ratio_win).collect::<Vec<_>>(),
        )),
        col(Float64Array::from(
            log.iter().map(|r| r.ratio_lose).collect::<Vec<_>>(),
        )),
        col(UInt64Array::from(
            log.iter().map(|r| r.pairs).collect::<Vec<_>>(),
        )),
        col(Float64Array::from(
            log.iter().map(|r| r.valid_rate).collect::<Vec<_>>(),
        )),
        col(Float64Array::from(
            log.iter().map(|r| r.spm_mean).collect::<Vec<_>>(),
        )),
    ];
    write_table(cx, "rounds.parquet", schema, cols)
}
