//! `spo`: step-by-step preference optimisation of the base model with LoRA (spo-reference §2).
//!
//! Each round samples prompts and rolls the current policy out with DDIM(η) and CFG. Inside the
//! trained timestep range, every step branches into a pool of `k` candidates from the same x_t;
//! after `j` steps (j = 1: SPO; j > 1: MSPO) the SPM scores each candidate's x₀-prediction at
//! its timestep (the final clean candidates at t = 0), the best and worst (or a random pair)
//! form a training pair when their 2-way softmax margin exceeds the threshold, and the chain
//! continues from a random candidate (or the winner / loser, for Table 4). The stored pairs then
//! train the LoRA policy, once each, with the clamped-ratio DPO loss against the LoRA-disabled
//! reference: L = −log σ(β·log r̄_w − β·log r̄_l), r̄ = clamp(p_θ/p_ref, 1 − ε, 1 + ε).

use std::sync::Arc;

use arrow_array::{Float64Array, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use candle_core::{DType, Device, IndexOp, Tensor};
use spo_clip::Spm;
use spo_core::{ParamSpec, StageContext, StageError, StageKind};
use spo_diffusion::{Ddim, NoiseSchedule, SchedulerConfig, UNet2DConditionModel};
use spo_methods::pairs::{self, PairSelection};
use spo_methods::ratio::{ClampedRatio, RatioLoss};
use spo_nn::{AdamW, SeededRng};

use crate::checkpoint::exact_f64;
use crate::error::{At, Result};
use crate::gradspo::{Ema, GradSpo};
use crate::inworld::{Conditioning, InWorldClip, device, lora_policy, on_cores};
use crate::training::Trainer;
use crate::vocab::Vocab;
use crate::world_parquet::{col, write_table};
use crate::worlddata::{Prompt, WorldData};

spo_core::param_choice! {
    /// The `continuation` param: [`pairs::Continuation`]'s names.
    pub enum Continuation { Random = "random", Win = "win", Lose = "lose" }
}

spo_core::param_choice! {
    /// The `pair` param: [`pairs::PairChoice`]'s names.
    pub enum PairChoice { BestWorst = "best-worst", Random = "random" }
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
    }
}

/// The `spo` stage kind.
pub struct SpoTrain;

impl StageKind for SpoTrain {
    fn name(&self) -> &'static str {
        "spo"
    }
    fn version(&self) -> u32 {
        // 3: a ResNet block's GroupNorm–SiLU–conv is one fused op (last-bit changes).
        // 2: the fused CPU convolution, attention and linear ops (last-bit changes).
        3
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
    if gradspo.is_some() && p.j != 1 {
        return Err(StageError::param(
            "j",
            format!(
                "GradSPO's target is defined for j = 1 (SPO), not j = {}",
                p.j
            ),
        )
        .into());
    }
    let dev = device();
    let seed = cx.seed().unwrap_or(0);
    let world = WorldData::load(cx.input_of_kind("world")?)?;
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
    let cfg = Settings {
        k: p.k,
        j: p.j,
        lo: p.t_range[0],
        hi: p.t_range[1],
        selection: PairSelection {
            pair: p.pair.into(),
            continuation: p.continuation.into(),
            threshold: p.threshold,
        },
        loss: ClampedRatio {
            beta: p.beta,
            clip_eps: p.clip_eps,
        },
        cfg: p.cfg,
        train_batch: p.train_batch,
        epochs: p.epochs,
        gradspo,
    };
    // GradSPO rolls out with a moving average of the policy, checkpointed with it
    let mut ema = gradspo
        .map(|g| Ema::attach(&lora_vars, g.ema_decay))
        .transpose()?;
    let name = if gradspo.is_some() { "gradspo" } else { "spo" };
    let models = Models {
        unet: &unet,
        ddim: &ddim,
        text: &text,
        spm: &spm,
        spm_vocab: &spm_vocab,
        dev: &dev,
    };
    let rounds = p.rounds;
    let mut tr: Trainer<Vec<RoundLog>> = Trainer::start(
        cx,
        name,
        rounds,
        p.checkpoint_every,
        seed,
        &mut lora_vars,
        &mut opt,
    )?;
    while tr.step < rounds {
        // ---- sampling ----
        let prompts: Vec<&Prompt> = tr
            .rng
            .indices(p.prompts, world.train.len())
            .into_iter()
            .map(|i| &world.train[i])
            .collect();
        let rng = &mut tr.rng;
        let ((pairs, stats), (loss, ratios)) = on_cores(cx.threads(), || {
            if let Some(ema) = ema.as_mut() {
                ema.swap_in()?;
            }
            let sampled = rollout(&models, &cfg, &prompts, rng)?;
            if let Some(ema) = ema.as_mut() {
                ema.swap_out()?;
            }
            // ---- training ----
            let trained = train_round(&models, &cfg, &sampled.0, &mut opt, ema.as_ref(), rng)?;
            Ok((sampled, trained))
        })?;
        tr.extra.push(RoundLog {
            round: tr.step as u64 + 1,
            loss,
            ratio_win: ratios.0,
            ratio_lose: ratios.1,
            pairs: pairs.len() as u64,
            valid_rate: stats.valid_rate,
            spm_mean: stats.mean_score,
        });
        // Rounds without a valid pair record the reference loss ln 2.
        tr.record(loss.unwrap_or(std::f64::consts::LN_2), &lora_vars, &opt)?;
    }
    let log = std::mem::take(&mut tr.extra);
    tr.finish(cx, name)?;
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
    unet.save_lora(&path).at(&path)?;
    Ok(())
}

struct Settings {
    k: usize,
    j: usize,
    lo: usize,
    hi: usize,
    selection: PairSelection,
    loss: ClampedRatio,
    cfg: f64,
    train_batch: usize,
    epochs: usize,
    gradspo: Option<GradSpo>,
}

struct Models<'a> {
    unet: &'a UNet2DConditionModel,
    ddim: &'a Ddim,
    text: &'a InWorldClip,
    spm: &'a Spm,
    spm_vocab: &'a Vocab,
    dev: &'a Device,
}

/// One training pair: both sides' x_t (equal for SPO, different along MSPO chains), the
/// transition's t, the two x_{t−1}, and the prompt.
struct Pair {
    xt_w: Tensor,
    xt_l: Tensor,
    t: usize,
    x_w: Tensor,
    x_l: Tensor,
    prompt: String,
    /// GradSPO's noise targets `(ε*_w, ε*_l)` for the shared x_t.
    targets: Option<(Tensor, Tensor)>,
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

struct RolloutStats {
    valid_rate: f64,
    mean_score: f64,
}

/// Candidate chains of a pool: for each of the `k·b` candidates (candidate-major) the
/// transitions since the branch point: (x_t, t, x_{t−1}).
struct Pool {
    cands: Tensor,
    history: Vec<(Tensor, usize, Tensor)>,
    /// The rollout policy's ε at the branch point and each candidate's sampling noise `z`
    /// (`(b, …)` each), for GradSPO's targets.
    eps: Tensor,
    noises: Vec<Tensor>,
}

impl Models<'_> {
    /// GradSPO's targets for prompt `i`'s pair `(win, lose)` of `pool` (branched at one t):
    /// the rollout policy's ε moved by ∓ s·√(1 − ᾱ_t)·(z_win − z_lose)/2.
    fn gradspo_targets(
        &self,
        pool: &Pool,
        i: usize,
        (win, lose): (usize, usize),
        g: GradSpo,
    ) -> Result<(Tensor, Tensor)> {
        let t = pool.history[0].1;
        let row = |x: &Tensor| x.narrow(0, i, 1);
        let abar = self.ddim.schedule().alphas_cumprod()[t];
        let scale = Tensor::new(&[(1.0 - abar).sqrt() as f32], self.dev)?;
        Ok(spo_methods::gradspo::targets(
            &row(&pool.eps)?,
            &row(&pool.noises[win])?,
            &row(&pool.noises[lose])?,
            &scale,
            g.grad_scale,
        )?)
    }

    /// The policy's guided ε during the rollout, detached: sampling records no graph.
    fn eps(&self, x: &Tensor, t: usize, prompts: &Conditioning, cfg: f64) -> Result<Tensor> {
        let ts = vec![t; x.dim(0)?];
        prompts
            .guided_eps(self.unet, x, &ts, cfg)
            .map(|e| e.detach())
    }
    fn scores(&self, pixels: &Tensor, prompts: &[&str], t: usize) -> Result<Vec<f64>> {
        let ids = self.spm_vocab.batch(prompts, self.dev)?;
        let px = pixels.clamp(-1f32, 1f32)?;
        Ok(self.spm.score(&px, &ids, &vec![t as f32; prompts.len()])?)
    }
}

fn rollout(
    m: &Models,
    s: &Settings,
    prompts: &[&Prompt],
    rng: &mut SeededRng,
) -> Result<(Vec<Pair>, RolloutStats)> {
    let b = prompts.len();
    let texts: Vec<&str> = prompts.iter().map(|p| p.text.as_str()).collect();
    let texts_k: Vec<&str> = (0..s.k).flat_map(|_| texts.iter().copied()).collect();
    // the prompts are encoded once for the whole trajectory, for the chain and for the pools
    let (cond, cond_k) = (
        m.text.conditioning(&texts, m.dev)?,
        m.text.conditioning(&texts_k, m.dev)?,
    );
    let size = m.unet.config().sample_size.unwrap_or(32);
    let mut x = rng.normal((b, 3, size, size), 0.0, 1.0, DType::F32, m.dev)?;
    let mut pool: Option<Pool> = None;
    let mut pairs = Vec::new();
    let mut tally = Tally::default();
    let timesteps = m.ddim.timesteps().to_vec();
    for &t in &timesteps {
        // 1. the model's prediction for the current state
        let (xb, eps) = match pool.take() {
            Some(mut pl) => {
                let eps_c = m.eps(&pl.cands, t, &cond_k, s.cfg)?;
                if pl.history.len() < s.j {
                    // MSPO: every candidate takes another plain step before it is judged.
                    let z = rng.normal(pl.cands.shape(), 0.0, 1.0, DType::F32, m.dev)?;
                    let next = m
                        .ddim
                        .step(&eps_c, &vec![t; s.k * b], &pl.cands, Some(&z))?
                        .0;
                    pl.history.push((pl.cands.clone(), t, next.clone()));
                    pl.cands = next;
                    pool = Some(pl);
                    continue;
                }
                let (x0_hat, _) =
                    m.ddim
                        .predict_x0_and_eps(&eps_c, &vec![t; s.k * b], &pl.cands)?;
                let chosen = judge(m, s, &texts, &pl, &x0_hat, t, rng, &mut pairs, &mut tally)?;
                let cands = pl.cands;
                let idx = Tensor::from_vec(
                    chosen
                        .iter()
                        .enumerate()
                        .map(|(i, c)| (c * b + i) as u32)
                        .collect::<Vec<_>>(),
                    b,
                    m.dev,
                )?;
                (cands.index_select(&idx, 0)?, eps_c.index_select(&idx, 0)?)
            }
            None => {
                let eps = m.eps(&x, t, &cond, s.cfg)?;
                (x.clone(), eps)
            }
        };
        // 2. branch into a pool inside the trained range, else one plain step
        let ts = vec![t; b];
        if (s.lo..=s.hi).contains(&t) {
            let tr = m.ddim.transition(&eps, &ts, &xb)?;
            let noises: Vec<Tensor> = (0..s.k)
                .map(|_| rng.normal(xb.shape(), 0.0, 1.0, DType::F32, m.dev))
                .collect::<Result<_, _>>()?;
            let children: Vec<Tensor> = noises
                .iter()
                .map(|z| tr.sample(z))
                .collect::<Result<_, _>>()?;
            let cands = Tensor::cat(&children, 0)?;
            let parents = Tensor::cat(&vec![xb.clone(); s.k], 0)?;
            pool = Some(Pool {
                cands: cands.clone(),
                history: vec![(parents, t, cands)],
                eps: eps.clone(),
                noises,
            });
        } else {
            let z = rng.normal(xb.shape(), 0.0, 1.0, DType::F32, m.dev)?;
            x = m.ddim.step(&eps, &ts, &xb, Some(&z))?.0;
        }
    }
    // 3. a pool left at the end holds clean candidates: judge them at t = 0
    if let Some(pl) = pool.take() {
        judge(m, s, &texts, &pl, &pl.cands, 0, rng, &mut pairs, &mut tally)?;
    }
    let stats = RolloutStats {
        valid_rate: if tally.pools == 0 {
            0.0
        } else {
            tally.valid as f64 / tally.pools as f64
        },
        mean_score: if tally.score_n == 0 {
            0.0
        } else {
            tally.score_sum / tally.score_n as f64
        },
    };
    Ok((pairs, stats))
}

#[derive(Default)]
struct Tally {
    pools: usize,
    valid: usize,
    score_sum: f64,
    score_n: usize,
}

/// Scores a pool's candidates (`pixels`: their x₀-predictions, or themselves when clean) at
/// `t_score`, stores the valid pairs with every transition of the two chains, and returns the
/// candidate each prompt's chain continues from.
#[allow(clippy::too_many_arguments)]
fn judge(
    m: &Models,
    s: &Settings,
    texts: &[&str],
    pool: &Pool,
    pixels: &Tensor,
    t_score: usize,
    rng: &mut SeededRng,
    pairs: &mut Vec<Pair>,
    tally: &mut Tally,
) -> Result<Vec<usize>> {
    let b = texts.len();
    let texts_k: Vec<&str> = (0..s.k).flat_map(|_| texts.iter().copied()).collect();
    let scores = m.scores(pixels, &texts_k, t_score)?;
    tally.score_sum += scores.iter().sum::<f64>();
    tally.score_n += scores.len();
    tally.pools += b;
    let mut chosen = Vec::with_capacity(b);
    for i in 0..b {
        let sc: Vec<f64> = (0..s.k).map(|c| scores[c * b + i]).collect();
        let picked = s.selection.pick(&sc, rng);
        if let Some((win, lose)) = picked.pair {
            tally.valid += 1;
            let targets = match s.gradspo {
                Some(g) => Some(m.gradspo_targets(pool, i, (win, lose), g)?),
                None => None,
            };
            for (xt, t, xn) in &pool.history {
                let row =
                    |c: usize, tensor: &Tensor| tensor.i(c * b + i).and_then(|r| r.unsqueeze(0));
                pairs.push(Pair {
                    xt_w: row(win, xt)?,
                    xt_l: row(lose, xt)?,
                    t: *t,
                    x_w: row(win, xn)?,
                    x_l: row(lose, xn)?,
                    prompt: texts[i].to_owned(),
                    targets: targets.clone(),
                });
            }
        }
        chosen.push(picked.next);
    }
    Ok(chosen)
}

/// `epochs` passes over the stored pairs; returns the mean loss (None without pairs) and the mean
/// clamped ratios of the winners and losers.
fn train_round(
    m: &Models,
    s: &Settings,
    pairs: &[Pair],
    opt: &mut AdamW,
    ema: Option<&Ema>,
    rng: &mut SeededRng,
) -> Result<(Option<f64>, (f64, f64))> {
    if pairs.is_empty() {
        return Ok((None, (1.0, 1.0)));
    }
    let order: Vec<usize> = (0..s.epochs)
        .flat_map(|_| rng.permutation(pairs.len()))
        .collect();
    let (mut loss_sum, mut rw_sum, mut rl_sum, mut n) = (0.0, 0.0, 0.0, 0usize);
    // Each epoch's permutation is cut into micro-batches of its own.
    for chunk in order
        .chunks(pairs.len())
        .flat_map(|epoch| epoch.chunks(s.train_batch))
    {
        let c = chunk.len();
        let cat = |f: &dyn Fn(&Pair) -> &Tensor| {
            Tensor::cat(&chunk.iter().map(|&i| f(&pairs[i])).collect::<Vec<_>>(), 0)
        };
        let xt = Tensor::cat(&[cat(&|p| &p.xt_w)?, cat(&|p| &p.xt_l)?], 0)?;
        let xn = Tensor::cat(&[cat(&|p| &p.x_w)?, cat(&|p| &p.x_l)?], 0)?;
        let ts: Vec<usize> = chunk
            .iter()
            .chain(chunk.iter())
            .map(|&i| pairs[i].t)
            .collect();
        let texts: Vec<&str> = chunk
            .iter()
            .chain(chunk.iter())
            .map(|&i| pairs[i].prompt.as_str())
            .collect();
        // log-probabilities of the stored x_{t−1} under the policy and the frozen reference
        let prompts = m.text.conditioning(&texts, m.dev)?;
        // GradSPO scores a transition by −MSE(ε_θ, ε*) instead of its log-probability
        let targets = match s.gradspo {
            Some(_) => {
                let side = |w: bool| -> Result<Tensor> {
                    let parts: Vec<Tensor> = chunk
                        .iter()
                        .map(|&i| {
                            let (tw, tl) = pairs[i].targets.as_ref().ok_or_else(|| {
                                StageError::Failed("a GradSPO pair without targets".into())
                            })?;
                            Ok(if w { tw.clone() } else { tl.clone() })
                        })
                        .collect::<Result<_>>()?;
                    Ok(Tensor::cat(&parts, 0)?)
                };
                Some(Tensor::cat(&[side(true)?, side(false)?], 0)?)
            }
            None => None,
        };
        let logp = |lora: bool| -> Result<Tensor> {
            m.unet.set_lora_enabled(lora);
            let eps = prompts.guided_eps(m.unet, &xt, &ts, s.cfg)?;
            let eps = if lora { eps } else { eps.detach() };
            Ok(match &targets {
                Some(targets) => spo_methods::gradspo::score(&eps, targets)?,
                None => m
                    .ddim
                    .transition(&eps, &ts, &xt)
                    .and_then(|tr| tr.log_prob(&xn))?,
            })
        };
        let lp_ref = logp(false)?;
        let lp = logp(true)?;
        // SPO's clamped-ratio loss over the winners' and the losers' transitions
        let RatioLoss {
            loss,
            ratio_win: rw,
            ratio_lose: rl,
        } = s.loss.ordered_pairs(&lp, &lp_ref)?;
        let grads = loss.backward()?;
        opt.step(&grads)?;
        if let Some(ema) = ema {
            ema.update()?;
        }
        let mean = |t: &Tensor| {
            t.mean_all()
                .and_then(|v| v.to_scalar::<f32>())
                .map(f64::from)
        };
        loss_sum += loss.to_scalar::<f32>()? as f64 * c as f64;
        rw_sum += mean(&rw)? * c as f64;
        rl_sum += mean(&rl)? * c as f64;
        n += c;
    }
    m.unet.set_lora_enabled(true);
    Ok((
        Some(loss_sum / n as f64),
        (rw_sum / n as f64, rl_sum / n as f64),
    ))
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
