//! The rollouts of the online methods (D3PO, DDPO) as library code: [`roll_out`] runs the
//! policy's chains to the end with DDIM(η) and CFG, recording every transition and its
//! log-probability under the policy that sampled it; [`policy_log_probs`] and
//! [`reference_log_probs`] re-score recorded transitions under the policy (for training) or
//! the frozen reference. The rewards and the losses are the
//! caller's ([`crate::ratio`], [`crate::ddpo`]).

use candle_core::{DType, Tensor};
use spo_diffusion::{Ddim, Result};
use spo_nn::SeededRng;

use crate::spo::{Backprop, Denoiser};

/// One denoising step of every chain: `(n, …)` states before and after, and the
/// log-probability `(n,)` of the step under the policy that sampled it.
pub struct Transition {
    pub x: Tensor,
    pub t: usize,
    pub next: Tensor,
    pub logp: Tensor,
}

/// A batch of chains rolled out to the end.
pub struct Chains {
    pub steps: Vec<Transition>,
    /// The chains' last states, `(n, …)`.
    pub last: Tensor,
}

/// Rolls the chains starting at `x` (one row per row of `prompts`) out to the end, drawing each
/// step's noise from `rng`.
pub fn roll_out<D: Denoiser>(
    den: &D,
    ddim: &Ddim,
    prompts: &D::Prompts,
    mut x: Tensor,
    rng: &mut SeededRng,
) -> Result<Chains> {
    let n = x.dim(0)?;
    let mut steps = Vec::with_capacity(ddim.timesteps().len());
    for &t in ddim.timesteps() {
        let ts = vec![t; n];
        let eps = den.eps_no_grad(prompts, &x, &ts)?;
        let z = rng.normal(x.shape(), 0.0, 1.0, DType::F32, den.device())?;
        let transition = ddim.transition(&eps, &ts, &x)?;
        let next = transition.sample(&z)?;
        let logp = transition.log_prob(&next)?.detach();
        steps.push(Transition {
            x,
            t,
            next: next.clone(),
            logp,
        });
        x = next;
    }
    Ok(Chains { steps, last: x })
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
    pub fn gather(
        &self,
        rows: &[(usize, usize)],
        which: fn(&Transition) -> &Tensor,
    ) -> Result<Tensor> {
        let parts: Vec<Tensor> = rows
            .iter()
            .map(|&(s, i)| which(&self.steps[s]).narrow(0, i, 1))
            .collect::<candle_core::Result<_>>()?;
        Ok(Tensor::cat(&parts, 0)?)
    }
}

/// The recorded transitions `rows` (step index, chain index) gathered: their states before
/// and after, timesteps, and the prompts' rows.
fn gathered(
    chains: &Chains,
    rows: &[(usize, usize)],
) -> Result<(Tensor, Tensor, Vec<usize>, Vec<u32>)> {
    let x = chains.gather(rows, |s| &s.x)?;
    let next = chains.gather(rows, |s| &s.next)?;
    let ts = rows.iter().map(|&(s, _)| chains.steps[s].t).collect();
    let picked = rows.iter().map(|&(_, i)| i as u32).collect();
    Ok((x, next, ts, picked))
}

/// The log-probabilities `(m,)` of the recorded transitions `rows` (step index, chain index)
/// under the frozen reference (the LoRA off), detached, guided as in sampling.
pub fn reference_log_probs<D: Denoiser>(
    den: &D,
    ddim: &Ddim,
    prompts: &D::Prompts,
    chains: &Chains,
    rows: &[(usize, usize)],
) -> Result<Tensor> {
    let (x, next, ts, picked) = gathered(chains, rows)?;
    let eps = den.eps(&den.select(prompts, &picked)?, &x, &ts, true)?;
    ddim.transition(&eps, &ts, &x)?.log_prob(&next)
}

/// The log-probabilities `(m,)` of the recorded transitions `rows` under the policy, for
/// training ([`Denoiser::eps_for_training`]: with candle's graph, or recomputed by a
/// checkpointing denoiser), and the [`Backprop`] that takes a loss built from them to the
/// trainable variables.
pub fn policy_log_probs<'d, D: Denoiser>(
    den: &'d D,
    ddim: &Ddim,
    prompts: &D::Prompts,
    chains: &Chains,
    rows: &[(usize, usize)],
) -> Result<(Tensor, Backprop<'d>)> {
    let (x, next, ts, picked) = gathered(chains, rows)?;
    den.eps_for_training(&den.select(prompts, &picked)?, &x, &ts)?
        .map(|eps| ddim.transition(eps, &ts, &x)?.log_prob(&next))
}

#[cfg(test)]
mod tests {
    use spo_diffusion::{NoiseSchedule, SchedulerConfig};

    use super::*;
    use crate::toys::Toy;

    fn ddim() -> Ddim {
        Ddim::new(NoiseSchedule::new(SchedulerConfig::sd15()).unwrap(), 5, 1.0).unwrap()
    }

    fn start(n: usize) -> Tensor {
        SeededRng::new(3)
            .normal(
                (n, 1, 4, 4),
                0.0,
                1.0,
                DType::F32,
                &candle_core::Device::Cpu,
            )
            .unwrap()
    }

    #[test]
    fn a_rollout_records_every_step_and_re_scores_to_the_same_log_probabilities() -> Result<()> {
        let (toy, ddim) = (Toy::new(0.3), ddim());
        let chains = roll_out(&toy, &ddim, &3, start(3), &mut SeededRng::new(4))?;
        assert_eq!(chains.steps.len(), 5);
        assert_eq!(toy.calls.get(), 5, "one denoiser call per step");
        let ts: Vec<usize> = chains.steps.iter().map(|s| s.t).collect();
        assert_eq!(ts, ddim.timesteps());
        // each step starts where the previous one ended, and the last state is the last next
        for pair in chains.steps.windows(2) {
            let d = (&pair[0].next - &pair[1].x)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            assert_eq!(d, 0.0);
        }
        let last = chains.steps.last().map(|s| &s.next).unwrap();
        assert_eq!(
            (last - &chains.last)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?,
            0.0
        );
        // re-scored under the policy that sampled them, the transitions (in a shuffled order)
        // get back their recorded log-probabilities
        let rows = chains.shuffled(3, &mut SeededRng::new(5));
        assert_eq!(rows.len(), 15);
        let again = policy_log_probs(&toy, &ddim, &3, &chains, &rows)?
            .0
            .to_vec1::<f32>()?;
        let recorded = chains.gather(&rows, |s| &s.logp)?.to_vec1::<f32>()?;
        for (a, b) in again.iter().zip(&recorded) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        Ok(())
    }

    #[test]
    fn the_policy_s_log_probabilities_carry_a_gradient_and_the_reference_s_do_not() -> Result<()> {
        let (toy, ddim) = (Toy::new(0.3), ddim());
        let chains = roll_out(&toy, &ddim, &2, start(2), &mut SeededRng::new(6))?;
        let rows = [(0, 0), (2, 1), (4, 0)];
        let (policy, backprop) = policy_log_probs(&toy, &ddim, &2, &chains, &rows)?;
        let loss = policy.sqr()?.sum_all()?;
        let graph = backprop.gradients(&loss)?;
        let reference = reference_log_probs(&toy, &ddim, &2, &chains, &rows)?;
        assert!(!reference.track_op());
        // the toy's policy and reference agree at w = w₀
        let d = (&policy - reference)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(d < 1e-5, "{d}");
        // a denoiser that recomputes its ε in the backward (gradient checkpointing) gives the
        // same values and the same gradient of the same loss
        let mut checkpointed = Toy::new(0.3);
        checkpointed.recompute = true;
        let (again, backprop) = policy_log_probs(&checkpointed, &ddim, &2, &chains, &rows)?;
        let same = (&policy - &again)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(same, 0.0);
        let recomputed = backprop.gradients(&again.sqr()?.sum_all()?)?;
        let (a, b) = (
            graph
                .get(&toy.w)
                .expect("graph gradient")
                .to_vec1::<f32>()?[0],
            recomputed
                .get(&checkpointed.w)
                .expect("recomputed gradient")
                .to_vec1::<f32>()?[0],
        );
        assert!(a != 0.0 && (a - b).abs() <= 1e-5 * a.abs(), "{a} vs {b}");
        Ok(())
    }

    #[test]
    fn shuffled_lists_each_transition_of_the_first_chains_once() {
        let chains = Chains {
            steps: (0..4)
                .map(|t| {
                    let z = Tensor::zeros(3, DType::F32, &candle_core::Device::Cpu).unwrap();
                    Transition {
                        x: z.clone(),
                        t,
                        next: z.clone(),
                        logp: z,
                    }
                })
                .collect(),
            last: Tensor::zeros(3, DType::F32, &candle_core::Device::Cpu).unwrap(),
        };
        let mut rows = chains.shuffled(2, &mut SeededRng::new(1));
        assert_ne!(rows, {
            let mut sorted = rows.clone();
            sorted.sort();
            sorted
        });
        rows.sort();
        let want: Vec<(usize, usize)> = (0..4).flat_map(|s| (0..2).map(move |i| (s, i))).collect();
        assert_eq!(rows, want);
    }
}
