//! One round of SPO / MSPO (spo-reference §2) as library code: [`rollout`] rolls the policy
//! out with DDIM(η) and CFG; inside the trained timestep range every step branches into a pool
//! of `k` candidates from the same x_t; after `j` steps (j = 1: SPO; j > 1: MSPO) a step-aware
//! judge scores each candidate's x₀-prediction at its timestep (clean candidates at t = 0), the
//! pair selection keeps a pair past its threshold with every transition of its two chains, and
//! the chain continues from the candidate it names. [`train_round`] then trains the policy on
//! the stored pairs with the clamped-ratio loss against the frozen reference (GradSPO: with a
//! noise-target score in place of the log-probability).
//!
//! The models come in through two traits, so this module knows neither the store nor any
//! particular text encoder or judge.

use std::ops::RangeInclusive;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, IndexOp, Tensor, Var};
use spo_diffusion::{Ddim, Result};
use spo_nn::{AdamW, SeededRng, add_gradients};

use crate::pairs::PairSelection;
use crate::ratio::{ClampedRatio, RatioLoss};

/// The policy being trained, with classifier-free guidance folded in.
pub trait Denoiser {
    /// Prompts encoded once, to reuse across steps.
    type Prompts;
    /// Encodes `texts`, one per row of the batches [`Denoiser::eps`] will see.
    fn encode(&self, texts: &[&str]) -> candle_core::Result<Self::Prompts>;
    /// The guided ε at `x` (`ts` per row): the policy's, or with `reference` the frozen base's
    /// (the LoRA off), detached.
    fn eps(
        &self,
        prompts: &Self::Prompts,
        x: &Tensor,
        ts: &[usize],
        reference: bool,
    ) -> candle_core::Result<Tensor>;
    /// The policy's ε for a rollout, which is never differentiated. The default detaches
    /// [`Denoiser::eps`]'s; a denoiser whose graph is large records none while computing it.
    fn eps_no_grad(
        &self,
        prompts: &Self::Prompts,
        x: &Tensor,
        ts: &[usize],
    ) -> candle_core::Result<Tensor> {
        Ok(self.eps(prompts, x, ts, false)?.detach())
    }
    /// The policy's ε for a training step; the default records candle's graph.
    fn eps_for_training(
        &self,
        prompts: &Self::Prompts,
        x: &Tensor,
        ts: &[usize],
    ) -> candle_core::Result<TrainingEps<'_>> {
        Ok(TrainingEps::Graph(self.eps(prompts, x, ts, false)?))
    }
    /// The encoded prompts of `rows` (indices into `prompts`' rows), in that order.
    fn select(&self, prompts: &Self::Prompts, rows: &[u32]) -> candle_core::Result<Self::Prompts>;
    /// Side of the square samples, in latent (or pixel) cells.
    fn sample_size(&self) -> usize;
    /// Channels of a sample: 3 for the in-world pixel-space model, the VAE's latent channels
    /// (4) for Stable Diffusion.
    fn channels(&self) -> usize;
    fn device(&self) -> &Device;
}

/// The trainable variables' gradients of `Σ ε·g`, given `g`.
pub type EpsBackward<'a> = Box<dyn FnOnce(&Tensor) -> candle_core::Result<GradStore> + 'a>;

/// The policy's ε for a training step, and how the trainable variables' gradients are had.
pub enum TrainingEps<'a> {
    /// ε with candle's graph: the loss's `backward` reaches the variables.
    Graph(Tensor),
    /// ε detached, and a function giving the variables' gradients of `Σ ε·g` for the loss's
    /// gradient `g` with respect to ε, the network recomputed as it goes (gradient
    /// checkpointing).
    Recomputed {
        eps: Tensor,
        backward: EpsBackward<'a>,
    },
}

impl<'a> TrainingEps<'a> {
    /// `f(ε)` (a log-probability, a denoising error), and the [`Backprop`] that takes a loss
    /// computed from it to the trainable variables.
    pub fn map<T>(self, f: impl FnOnce(&Tensor) -> Result<T>) -> Result<(T, Backprop<'a>)> {
        match self {
            TrainingEps::Graph(eps) => Ok((f(&eps)?, Backprop(None))),
            TrainingEps::Recomputed { eps, backward } => {
                // the loss is differentiated up to ε, the network by the denoiser
                let eps = Var::from_tensor(&eps)?.as_tensor().clone();
                Ok((f(&eps)?, Backprop(Some((eps, backward)))))
            }
        }
    }
}

/// How a loss computed from a [`TrainingEps`] reaches the trainable variables: candle's
/// backward through the graph, or through ε and then the denoiser's recomputation.
pub struct Backprop<'a>(Option<(Tensor, EpsBackward<'a>)>);

impl Backprop<'_> {
    /// The trainable variables' gradients of `loss`.
    pub fn gradients(self, loss: &Tensor) -> candle_core::Result<GradStore> {
        let mut grads = loss.backward()?;
        let Some((eps, backward)) = self.0 else {
            return Ok(grads);
        };
        let g = match grads.remove(&eps) {
            Some(g) => g,
            None => eps.zeros_like()?,
        };
        backward(&g)
    }
}

/// The step-aware preference model: a score per sample of `x0` (x₀-predictions, or clean
/// samples at t = 0, as the policy produces them: pixels in pixel space, latents in latent
/// space) for `texts` (one per row) at timestep `t`. The judge maps them to what it sees: the
/// in-world SPM clamps pixels to [−1, 1]; a latent judge decodes them with the VAE first.
pub trait StepJudge {
    fn scores(&self, x0: &Tensor, texts: &[&str], t: usize) -> candle_core::Result<Vec<f64>>;
}

/// SPO's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SpoConfig {
    /// Candidates per pool (Table 6).
    pub k: usize,
    /// Steps per pool before judging; > 1 is MSPO (Table 7).
    pub j: usize,
    /// Transitions from t in this range branch and train (Table 8).
    pub t_range: RangeInclusive<usize>,
    /// Which candidates form the pair and which one the chain continues from (Tables 4, 9).
    pub selection: PairSelection,
    pub loss: ClampedRatio,
    /// Pairs per micro-batch (one forward and backward).
    pub train_batch: usize,
    /// Micro-batches per optimiser step, their gradients summed with each loss divided by this
    /// (as accelerate accumulates; SPO's SD-1.5 step averaged 4 GPUs × 10 pairs); a round's
    /// last step takes what is left.
    pub accumulate: usize,
    /// Passes over a round's pairs.
    pub epochs: usize,
    /// GradSPO's `grad_scale`: score transitions against noise targets instead.
    pub gradspo_scale: Option<f64>,
}

/// One training pair: both sides' x_t (equal for SPO, different along MSPO chains), the
/// transition's t, the two x_{t−1}, and the prompt.
pub struct Pair {
    pub xt_w: Tensor,
    pub xt_l: Tensor,
    pub t: usize,
    pub x_w: Tensor,
    pub x_l: Tensor,
    pub prompt: String,
    /// GradSPO's noise targets `(ε*_w, ε*_l)` for the shared x_t.
    pub targets: Option<(Tensor, Tensor)>,
}

/// What a rollout reports besides its pairs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RolloutStats {
    /// Share of pools whose pair passed the threshold.
    pub valid_rate: f64,
    /// Mean judge score over every judged candidate.
    pub mean_score: f64,
}

/// What a training round reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoundResult {
    /// Mean loss over the pairs (`None` without pairs).
    pub loss: Option<f64>,
    /// Mean clamped ratios of the winners' and the losers' transitions (1 without pairs).
    pub ratio_win: f64,
    pub ratio_lose: f64,
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

#[derive(Default)]
struct Tally {
    pools: usize,
    valid: usize,
    score_sum: f64,
    score_n: usize,
}

/// Rolls the policy out for `texts` (one chain each) and returns the pairs its pools yield.
pub fn rollout<D: Denoiser, J: StepJudge + ?Sized>(
    den: &D,
    judge: &J,
    ddim: &Ddim,
    cfg: &SpoConfig,
    texts: &[&str],
    rng: &mut SeededRng,
) -> Result<(Vec<Pair>, RolloutStats)> {
    let b = texts.len();
    let dev = den.device();
    let texts_k: Vec<&str> = (0..cfg.k).flat_map(|_| texts.iter().copied()).collect();
    // the prompts are encoded once for the whole trajectory, for the chain and for the pools
    let (cond, cond_k) = (den.encode(texts)?, den.encode(&texts_k)?);
    let eps_at = |prompts: &D::Prompts, x: &Tensor, t: usize| {
        den.eps_no_grad(prompts, x, &vec![t; x.dim(0)?])
    };
    let size = den.sample_size();
    let mut x = rng.normal((b, den.channels(), size, size), 0.0, 1.0, DType::F32, dev)?;
    let mut pool: Option<Pool> = None;
    let mut pairs = Vec::new();
    let mut tally = Tally::default();
    let kb = cfg.k * b;
    for &t in ddim.timesteps() {
        // 1. the model's prediction for the current state
        let (xb, eps) = match pool.take() {
            Some(mut pl) => {
                let eps_c = eps_at(&cond_k, &pl.cands, t)?;
                if pl.history.len() < cfg.j {
                    // MSPO: every candidate takes another plain step before it is judged.
                    let z = rng.normal(pl.cands.shape(), 0.0, 1.0, DType::F32, dev)?;
                    let next = ddim.step(&eps_c, &vec![t; kb], &pl.cands, Some(&z))?.0;
                    pl.history.push((pl.cands.clone(), t, next.clone()));
                    pl.cands = next;
                    pool = Some(pl);
                    continue;
                }
                let (x0_hat, _) = ddim.predict_x0_and_eps(&eps_c, &vec![t; kb], &pl.cands)?;
                let ctx = JudgeCtx {
                    judge,
                    ddim,
                    cfg,
                    texts,
                };
                let chosen = ctx.judge(&pl, &x0_hat, t, rng, &mut pairs, &mut tally)?;
                let idx = Tensor::from_vec(
                    chosen
                        .iter()
                        .enumerate()
                        .map(|(i, c)| (c * b + i) as u32)
                        .collect::<Vec<_>>(),
                    b,
                    dev,
                )?;
                (
                    pl.cands.index_select(&idx, 0)?,
                    eps_c.index_select(&idx, 0)?,
                )
            }
            None => {
                let eps = eps_at(&cond, &x, t)?;
                (x.clone(), eps)
            }
        };
        // 2. branch into a pool inside the trained range, else one plain step
        let ts = vec![t; b];
        if cfg.t_range.contains(&t) {
            let tr = ddim.transition(&eps, &ts, &xb)?;
            let noises: Vec<Tensor> = (0..cfg.k)
                .map(|_| rng.normal(xb.shape(), 0.0, 1.0, DType::F32, dev))
                .collect::<candle_core::Result<_>>()?;
            let children: Vec<Tensor> =
                noises.iter().map(|z| tr.sample(z)).collect::<Result<_>>()?;
            let cands = Tensor::cat(&children, 0)?;
            let parents = Tensor::cat(&vec![xb.clone(); cfg.k], 0)?;
            pool = Some(Pool {
                cands: cands.clone(),
                history: vec![(parents, t, cands)],
                eps: eps.clone(),
                noises,
            });
        } else {
            let z = rng.normal(xb.shape(), 0.0, 1.0, DType::F32, dev)?;
            x = ddim.step(&eps, &ts, &xb, Some(&z))?.0;
        }
    }
    // 3. a pool left at the end holds clean candidates: judge them at t = 0
    if let Some(pl) = pool.take() {
        let ctx = JudgeCtx {
            judge,
            ddim,
            cfg,
            texts,
        };
        ctx.judge(&pl, &pl.cands, 0, rng, &mut pairs, &mut tally)?;
    }
    let ratio = |n: f64, d: usize| if d == 0 { 0.0 } else { n / d as f64 };
    let stats = RolloutStats {
        valid_rate: ratio(tally.valid as f64, tally.pools),
        mean_score: ratio(tally.score_sum, tally.score_n),
    };
    Ok((pairs, stats))
}

/// What judging a pool needs besides the pool.
struct JudgeCtx<'a, J: ?Sized> {
    judge: &'a J,
    ddim: &'a Ddim,
    cfg: &'a SpoConfig,
    texts: &'a [&'a str],
}

impl<J: StepJudge + ?Sized> JudgeCtx<'_, J> {
    /// Scores a pool's candidates (`pixels`: their x₀-predictions, or themselves when clean) at
    /// `t_score`, stores the valid pairs with every transition of the two chains, and returns
    /// the candidate each prompt's chain continues from.
    fn judge(
        &self,
        pool: &Pool,
        pixels: &Tensor,
        t_score: usize,
        rng: &mut SeededRng,
        pairs: &mut Vec<Pair>,
        tally: &mut Tally,
    ) -> Result<Vec<usize>> {
        let (b, k) = (self.texts.len(), self.cfg.k);
        let texts_k: Vec<&str> = (0..k).flat_map(|_| self.texts.iter().copied()).collect();
        let scores = self.judge.scores(pixels, &texts_k, t_score)?;
        tally.score_sum += scores.iter().sum::<f64>();
        tally.score_n += scores.len();
        tally.pools += b;
        let mut chosen = Vec::with_capacity(b);
        for i in 0..b {
            let sc: Vec<f64> = (0..k).map(|c| scores[c * b + i]).collect();
            let picked = self.cfg.selection.pick(&sc, rng);
            if let Some((win, lose)) = picked.pair {
                tally.valid += 1;
                let targets = match self.cfg.gradspo_scale {
                    Some(s) => Some(self.gradspo_targets(pool, i, (win, lose), s)?),
                    None => None,
                };
                for (xt, t, xn) in &pool.history {
                    let row = |c: usize, x: &Tensor| x.i(c * b + i).and_then(|r| r.unsqueeze(0));
                    pairs.push(Pair {
                        xt_w: row(win, xt)?,
                        xt_l: row(lose, xt)?,
                        t: *t,
                        x_w: row(win, xn)?,
                        x_l: row(lose, xn)?,
                        prompt: self.texts[i].to_owned(),
                        targets: targets.clone(),
                    });
                }
            }
            chosen.push(picked.next);
        }
        Ok(chosen)
    }

    /// GradSPO's targets for prompt `i`'s pair `(win, lose)` of `pool` (branched at one t):
    /// the rollout policy's ε moved by ∓ s·√(1 − ᾱ_t)·(z_win − z_lose)/2.
    fn gradspo_targets(
        &self,
        pool: &Pool,
        i: usize,
        (win, lose): (usize, usize),
        scale: f64,
    ) -> Result<(Tensor, Tensor)> {
        let t = pool.history[0].1;
        let row = |x: &Tensor| x.narrow(0, i, 1);
        let abar = self.ddim.schedule().alphas_cumprod()[t];
        let sqrt = Tensor::new(&[(1.0 - abar).sqrt() as f32], pool.eps.device())?;
        Ok(crate::gradspo::targets(
            &row(&pool.eps)?,
            &row(&pool.noises[win])?,
            &row(&pool.noises[lose])?,
            &sqrt,
            scale,
        )?)
    }
}

/// `epochs` passes over the stored pairs in micro-batches of `train_batch`, one optimiser step
/// per `accumulate` of them, calling `after_step` after every step (GradSPO's moving average).
pub fn train_round<D: Denoiser>(
    den: &D,
    ddim: &Ddim,
    cfg: &SpoConfig,
    pairs: &[Pair],
    opt: &mut AdamW,
    after_step: &mut dyn FnMut() -> candle_core::Result<()>,
    rng: &mut SeededRng,
) -> Result<RoundResult> {
    if pairs.is_empty() {
        return Ok(RoundResult {
            loss: None,
            ratio_win: 1.0,
            ratio_lose: 1.0,
        });
    }
    let order: Vec<usize> = (0..cfg.epochs)
        .flat_map(|_| rng.permutation(pairs.len()))
        .collect();
    let (mut loss_sum, mut rw_sum, mut rl_sum, mut n) = (0.0, 0.0, 0.0, 0usize);
    // Each epoch's permutation is cut into micro-batches of its own.
    let chunks: Vec<&[usize]> = order
        .chunks(pairs.len())
        .flat_map(|epoch| epoch.chunks(cfg.train_batch))
        .collect();
    let accumulate = cfg.accumulate.max(1);
    let mut pending: Option<GradStore> = None;
    for (i, chunk) in chunks.iter().enumerate() {
        let c = chunk.len();
        let both = || chunk.iter().chain(chunk.iter()).map(|&i| &pairs[i]);
        let cat = |f: &dyn Fn(&Pair) -> &Tensor| {
            Tensor::cat(&chunk.iter().map(|&i| f(&pairs[i])).collect::<Vec<_>>(), 0)
        };
        let xt = Tensor::cat(&[cat(&|p| &p.xt_w)?, cat(&|p| &p.xt_l)?], 0)?;
        let xn = Tensor::cat(&[cat(&|p| &p.x_w)?, cat(&|p| &p.x_l)?], 0)?;
        let ts: Vec<usize> = both().map(|p| p.t).collect();
        let texts: Vec<&str> = both().map(|p| p.prompt.as_str()).collect();
        // log-probabilities of the stored x_{t−1} under the policy and the frozen reference
        let prompts = den.encode(&texts)?;
        // GradSPO scores a transition by −MSE(ε_θ, ε*) instead of its log-probability
        let targets = match cfg.gradspo_scale {
            Some(_) => {
                let side = |w: bool| -> candle_core::Result<Tensor> {
                    let parts: Vec<Tensor> = chunk
                        .iter()
                        .map(|&i| match &pairs[i].targets {
                            Some((tw, tl)) => Ok(if w { tw.clone() } else { tl.clone() }),
                            None => Err(candle_core::Error::Msg(
                                "a GradSPO pair without targets".into(),
                            )),
                        })
                        .collect::<candle_core::Result<_>>()?;
                    Tensor::cat(&parts, 0)
                };
                Some(Tensor::cat(&[side(true)?, side(false)?], 0)?)
            }
            None => None,
        };
        let logp = |eps: &Tensor| -> Result<Tensor> {
            match &targets {
                Some(targets) => Ok(crate::gradspo::score(eps, targets)?),
                None => ddim.transition(eps, &ts, &xt)?.log_prob(&xn),
            }
        };
        let lp_ref = logp(&den.eps(&prompts, &xt, &ts, true)?)?;
        let (lp, backprop) = den.eps_for_training(&prompts, &xt, &ts)?.map(logp)?;
        // SPO's clamped-ratio loss over the winners' and the losers' transitions
        let RatioLoss {
            loss,
            ratio_win: rw,
            ratio_lose: rl,
        } = cfg.loss.ordered_pairs(&lp, &lp_ref)?;
        let grads = if accumulate > 1 {
            backprop.gradients(&(&loss / accumulate as f64)?)?
        } else {
            backprop.gradients(&loss)?
        };
        add_gradients(&mut pending, grads, opt.vars())?;
        if (i + 1) % accumulate == 0 || i + 1 == chunks.len() {
            if let Some(grads) = pending.take() {
                opt.step(&grads)?;
            }
            after_step()?;
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
    Ok(RoundResult {
        loss: Some(loss_sum / n as f64),
        ratio_win: rw_sum / n as f64,
        ratio_lose: rl_sum / n as f64,
    })
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use spo_diffusion::{NoiseSchedule, SchedulerConfig};
    use spo_nn::AdamWConfig;

    use super::*;
    use crate::pairs::{Continuation, PairChoice};
    use crate::toys::Toy;

    /// Scores an image by its mean pixel, clamped to [−1, 1] as the in-world judges clamp: the
    /// brightest candidate wins.
    struct Brightness;

    impl StepJudge for Brightness {
        fn scores(
            &self,
            pixels: &Tensor,
            texts: &[&str],
            _t: usize,
        ) -> candle_core::Result<Vec<f64>> {
            assert_eq!(pixels.dim(0)?, texts.len());
            let pixels = pixels.clamp(-1f32, 1f32)?;
            let n = pixels.dim(0)?;
            let m = pixels.reshape((n, ()))?.mean(1)?.to_dtype(DType::F64)?;
            // scaled so every pool's gap passes a zero threshold
            Ok(m.to_vec1::<f64>()?.iter().map(|v| v * 1e3).collect())
        }
    }

    fn config(j: usize, threshold: f64) -> SpoConfig {
        SpoConfig {
            k: 3,
            j,
            t_range: 0..=751,
            selection: PairSelection {
                pair: PairChoice::BestWorst,
                continuation: Continuation::Win,
                threshold,
            },
            loss: ClampedRatio {
                beta: 10.0,
                clip_eps: 0.1,
            },
            train_batch: 2,
            accumulate: 1,
            epochs: 2,
            gradspo_scale: None,
        }
    }

    fn ddim() -> Ddim {
        Ddim::new(NoiseSchedule::new(SchedulerConfig::sd15()).unwrap(), 8, 1.0).unwrap()
    }

    /// AdamW on the toy's weight with a large ε, which makes a step proportional to the
    /// gradient rather than its sign alone: a sum that was not averaged, or a gradient off by a
    /// factor, would show.
    fn proportional_optimizer(toy: &Toy) -> AdamW {
        AdamW::new(
            vec![("w".into(), toy.w.clone())],
            AdamWConfig {
                lr: 1e-2,
                eps: 1.0,
                ..Default::default()
            },
        )
        .unwrap()
    }

    fn mean(x: &Tensor) -> f64 {
        x.mean_all().unwrap().to_scalar::<f32>().unwrap() as f64
    }

    #[test]
    fn each_pool_in_range_yields_its_best_and_worst_for_every_prompt() {
        let (toy, ddim) = (Toy::new(0.1), ddim());
        let in_range = ddim.timesteps().iter().filter(|t| **t <= 751).count();
        let texts = ["a cat", "a dog"];
        let mut rng = SeededRng::new(3);
        let (pairs, stats) =
            rollout(&toy, &Brightness, &ddim, &config(1, 0.0), &texts, &mut rng).unwrap();
        assert_eq!(pairs.len(), in_range * texts.len());
        assert_eq!(stats.valid_rate, 1.0);
        for (n, p) in pairs.iter().enumerate() {
            assert_eq!(p.prompt, texts[n % 2]);
            // SPO: both sides branch from one x_t, and the winner's x̂₀ is the brighter one
            assert_eq!(mean(&(&p.xt_w - &p.xt_l).unwrap().abs().unwrap()), 0.0);
            assert!(p.targets.is_none());
            // the winner's image as the judge saw it (x̂₀ at the next timestep; clean at the
            // end) is the brighter
            let ts = ddim.timesteps();
            let seen = |x: &Tensor| {
                let pixels = match ts
                    .iter()
                    .position(|t| *t == p.t)
                    .and_then(|i| ts.get(i + 1))
                {
                    Some(&next) => {
                        let eps = (x * 0.1).unwrap();
                        ddim.predict_x0_and_eps(&eps, &[next], x).unwrap().0
                    }
                    None => x.clone(),
                };
                mean(&pixels.clamp(-1f32, 1f32).unwrap())
            };
            assert!(seen(&p.x_w) > seen(&p.x_l), "pair {n}");
        }
    }

    #[test]
    fn mspo_stores_j_transitions_per_pair_and_a_high_threshold_none() {
        let (toy, ddim) = (Toy::new(0.1), ddim());
        let texts = ["a cat"];
        let (pairs, _) = rollout(
            &toy,
            &Brightness,
            &ddim,
            &config(2, 0.0),
            &texts,
            &mut SeededRng::new(5),
        )
        .unwrap();
        // t = 876 is outside the range; pools branch at 751, 501, 251 and hold two transitions
        // each (judged two steps later), and the pool branched at t = 1 is judged clean with one
        assert_eq!(pairs.len(), 7);
        for two in pairs[..6].chunks(2) {
            assert!(two[0].t > two[1].t);
            // the second transition starts from each candidate's own x_t
            assert_ne!(mean(&two[1].xt_w), mean(&two[1].xt_l));
        }
        assert_eq!(pairs[6].t, 1);
        let (none, stats) = rollout(
            &toy,
            &Brightness,
            &ddim,
            &config(1, 1.0),
            &texts,
            &mut SeededRng::new(5),
        )
        .unwrap();
        assert!(none.is_empty());
        assert_eq!(stats.valid_rate, 0.0);
    }

    #[test]
    fn a_round_steps_once_per_micro_batch_and_moves_the_policy_only() {
        let (toy, ddim) = (Toy::new(0.1), ddim());
        let texts = ["a cat", "a dog", "a fox"];
        let cfg = config(1, 0.0);
        let mut rng = SeededRng::new(7);
        let (pairs, _) = rollout(&toy, &Brightness, &ddim, &cfg, &texts, &mut rng).unwrap();
        let mut opt = AdamW::new(
            vec![("w".into(), toy.w.clone())],
            AdamWConfig {
                lr: 1e-2,
                ..Default::default()
            },
        )
        .unwrap();
        let steps = Cell::new(0);
        let mut after = || {
            steps.set(steps.get() + 1);
            Ok(())
        };
        let r = train_round(&toy, &ddim, &cfg, &pairs, &mut opt, &mut after, &mut rng).unwrap();
        assert_eq!(
            steps.get(),
            cfg.epochs * pairs.len().div_ceil(cfg.train_batch)
        );
        let loss = r.loss.unwrap();
        assert!(loss.is_finite() && loss > 0.0, "{loss}");
        let w = toy.w.as_tensor().to_vec1::<f32>().unwrap()[0] as f64;
        assert_ne!(w, toy.w0, "the policy did not move");
        let empty = train_round(&toy, &ddim, &cfg, &[], &mut opt, &mut after, &mut rng).unwrap();
        assert_eq!(
            (empty.loss, empty.ratio_win, empty.ratio_lose),
            (None, 1.0, 1.0)
        );
    }

    #[test]
    fn accumulating_micro_batches_equals_one_larger_batch() {
        let (toy, ddim) = (Toy::new(0.1), ddim());
        let mut rng = SeededRng::new(7);
        let (pairs, _) = rollout(
            &toy,
            &Brightness,
            &ddim,
            &config(1, 0.0),
            &["a cat"],
            &mut rng,
        )
        .unwrap();
        let pairs = &pairs[..4];
        // One pass over 4 pairs: one step of a 4-pair batch, or 2 × 2 pairs accumulated, or
        // 3 + 1 pairs (the last step takes what is left).
        let train = |train_batch: usize, accumulate: usize| {
            let toy = Toy::new(0.1);
            let cfg = SpoConfig {
                train_batch,
                accumulate,
                epochs: 1,
                ..config(1, 0.0)
            };
            let mut opt = proportional_optimizer(&toy);
            let steps = Cell::new(0);
            let mut after = || {
                steps.set(steps.get() + 1);
                Ok(())
            };
            let mut rng = SeededRng::new(1);
            let r = train_round(&toy, &ddim, &cfg, pairs, &mut opt, &mut after, &mut rng).unwrap();
            let w = toy.w.as_tensor().to_vec1::<f32>().unwrap()[0];
            (w, steps.get(), r.loss.unwrap())
        };
        let (w1, s1, l1) = train(4, 1);
        let (w2, s2, l2) = train(2, 2);
        let (w3, s3, _) = train(3, 2);
        assert_eq!((s1, s2, s3), (1, 1, 1), "one optimiser step each");
        assert_ne!(w1, 0.1, "the policy moved");
        assert!((w1 - w2).abs() < 1e-6, "{w1} vs {w2}");
        assert!(
            (l1 - l2).abs() < 1e-6,
            "the reported loss is the pairs' mean: {l1} vs {l2}"
        );
        assert_ne!(w3, 0.1);
        let (_, s4, _) = train(1, 3);
        assert_eq!(
            s4, 2,
            "4 micro-batches of 1, a step per 3 and one for the last"
        );
    }

    #[test]
    fn a_recomputed_training_eps_trains_as_the_graph_does() {
        let ddim = ddim();
        // SPO and GradSPO, with accumulated micro-batches and a last one of another size
        let train = |recompute: bool, gradspo: bool| {
            let toy = Toy {
                recompute,
                ..Toy::new(0.1)
            };
            let cfg = SpoConfig {
                train_batch: 3,
                accumulate: 2,
                gradspo_scale: gradspo.then_some(0.5),
                ..config(1, 0.0)
            };
            let (pairs, _) = rollout(
                &toy,
                &Brightness,
                &ddim,
                &cfg,
                &["a cat"],
                &mut SeededRng::new(8),
            )
            .unwrap();
            assert!(pairs.len() > 3, "{} pairs", pairs.len());
            let mut opt = proportional_optimizer(&toy);
            let mut rng = SeededRng::new(1);
            let r = train_round(
                &toy,
                &ddim,
                &cfg,
                &pairs,
                &mut opt,
                &mut || Ok(()),
                &mut rng,
            )
            .unwrap();
            let w = toy.w.as_tensor().to_vec1::<f32>().unwrap()[0];
            (w, r.loss.unwrap())
        };
        for gradspo in [false, true] {
            let ((w1, l1), (w2, l2)) = (train(false, gradspo), train(true, gradspo));
            assert_ne!(w1, 0.1, "the policy moved");
            assert!((w1 - w2).abs() < 1e-7, "{w1} vs {w2}");
            assert_eq!(l1, l2);
        }
    }

    #[test]
    fn gradspo_pairs_carry_targets_and_a_pair_without_them_is_an_error() {
        let (toy, ddim) = (Toy::new(0.1), ddim());
        let cfg = SpoConfig {
            gradspo_scale: Some(0.5),
            ..config(1, 0.0)
        };
        let mut rng = SeededRng::new(9);
        let (mut pairs, _) = rollout(&toy, &Brightness, &ddim, &cfg, &["a cat"], &mut rng).unwrap();
        assert!(pairs.iter().all(|p| p.targets.is_some()));
        pairs[0].targets = None;
        let mut opt =
            AdamW::new(vec![("w".into(), toy.w.clone())], AdamWConfig::default()).unwrap();
        let e = train_round(
            &toy,
            &ddim,
            &cfg,
            &pairs,
            &mut opt,
            &mut || Ok(()),
            &mut rng,
        )
        .expect_err("refused")
        .to_string();
        assert!(e.contains("without targets"), "{e}");
    }
}
