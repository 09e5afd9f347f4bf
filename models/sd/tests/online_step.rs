//! One D3PO step and one DDPO step on the tiny SD-1.5 pipeline against a PyTorch
//! re-implementation of the D3PO script's loss and of DDPO's PPO step
//! (`tests/fixtures/sd/make_online_step.py`): a rollout of two chains per prompt from one x_T
//! (DDIM η = 1, CFG 5, 4 steps, sampled with the LoRA off), each transition's log-probability,
//! D3PO's clamped-ratio loss over every step's labelled pair against the LoRA-off reference, and
//! DDPO's PPO-clipped loss against the sampling-time log-probabilities, with their LoRA
//! gradients — each computed by the functions the `d3po` and `ddpo` stages call on real weights
//! (`spo_methods::online`'s re-scoring and the methods' losses), with candle's graph and
//! checkpointed. `online::roll_out` draws each step's noise from spo-pipe's own RNG, so the
//! rollout is stepped here with the golden's noise through the same DDIM transition. Errors are
//! relative to the reference's largest magnitude.

use candle_core::{Device, IndexOp, Tensor};
use spo_diffusion::weights::load_safetensors;
use spo_diffusion::{Ddim, NoiseSchedule};
use spo_methods::ddpo::Ppo;
use spo_methods::online::{Chains, Transition, policy_log_probs, reference_log_probs};
use spo_methods::ratio::ClampedRatio;
use spo_methods::spo::Denoiser;
use spo_sd::SdPolicy;

mod common;
use common::{TestResult, check, check_lora_grads, fixtures, golden, tiny_sd15_with_lora};

const PROMPTS: [&str; 2] = ["a photo of a cat", "an astronaut riding a horse"];
const STEPS: usize = 4;
/// D3PO's label per prompt: (chain a, chain b).
const LABELS: [(f64, f64); 2] = [(1.0, -1.0), (-1.0, 1.0)];
/// DDPO's advantage per chain row (the third beyond the clip of 5).
const ADVANTAGES: [f32; 4] = [1.5, -0.75, 7.0, -2.0];
/// The log-probabilities agree within 4e-6 and the losses within 1e-6; the LoRA gradients, sums
/// over 16 transitions of differences of log-probabilities, within 2.5e-4 (D3PO) and 1.5e-4
/// (DDPO) measured, graph or checkpointed. A wrong label sign, a ratio against the policy
/// instead of the reference, a missing clamp or advantage clip would be off by its whole size.
const D3PO_TOLERANCE: f64 = 1e-3;
const DDPO_TOLERANCE: f64 = 5e-4;

#[test]
fn one_d3po_step_and_one_ddpo_step_match_the_pytorch_reimplementation() -> TestResult {
    let dev = Device::Cpu;
    let g = load_safetensors(
        &fixtures().join("sd/sd15_tiny_online_step.safetensors"),
        &dev,
    )?;
    let (sd, vars) = tiny_sd15_with_lora()?;
    let ddim = Ddim::new(NoiseSchedule::new(sd.scheduler().clone())?, STEPS, 1.0)?;
    assert_eq!(ddim.timesteps(), [751, 501, 251, 1]);
    let b = PROMPTS.len();
    // chains a (rows 0..b) then chains b (rows b..2b), each row its prompt's
    let texts: Vec<&str> = PROMPTS.iter().chain(PROMPTS.iter()).copied().collect();

    for (how, micro_batch, checkpointing) in [("graph", 16, false), ("checkpointed", 3, true)] {
        // micro-batches of 3 split the 8 or 16 rows unevenly: the chunks must join up exactly
        let policy = SdPolicy {
            sd: &sd,
            cfg: 5.0,
            micro_batch,
            checkpointing,
        };
        let cond = policy.encode(&texts)?;

        // 1. the rollout from one x_T per prompt, sampled with the LoRA off
        let x_t = golden(&g, "x_T")?;
        let mut x = Tensor::cat(&[&x_t, &x_t], 0)?;
        let noises = golden(&g, "noises")?;
        let mut steps = Vec::with_capacity(STEPS);
        for (s, &t) in ddim.timesteps().iter().enumerate() {
            let ts = vec![t; 2 * b];
            let eps = policy.eps(&cond, &x, &ts, true)?;
            let transition = ddim.transition(&eps, &ts, &x)?;
            let next = transition.sample(&noises.i(s)?)?;
            let logp = transition.log_prob(&next)?;
            steps.push(Transition {
                x,
                t,
                next: next.clone(),
                logp,
            });
            x = next;
        }
        let chains = Chains { steps, last: x };
        let stacked = |f: fn(&Transition) -> &Tensor| {
            Tensor::stack(&chains.steps.iter().map(f).collect::<Vec<_>>(), 0)
        };
        check(
            &format!("{how}: states"),
            &stacked(|s| &s.next)?,
            &golden(&g, "next")?,
            1e-4,
        )?;
        check(
            &format!("{how}: sampled log-probabilities"),
            &stacked(|s| &s.logp)?,
            &golden(&g, "logp_sampled")?,
            1e-5,
        )?;

        // 2. D3PO: every step's pair, chain a's transitions then chain b's (as its
        // `train_round` lays out a micro-batch)
        let pairs: Vec<(usize, usize)> = (0..STEPS)
            .flat_map(|s| (0..b).map(move |i| (s, i)))
            .collect();
        let rows: Vec<(usize, usize)> = pairs
            .iter()
            .copied()
            .chain(pairs.iter().map(|&(s, i)| (s, b + i)))
            .collect();
        let lp_ref = reference_log_probs(&policy, &ddim, &cond, &chains, &rows)?;
        check(
            &format!("{how}: D3PO reference log-probabilities"),
            &lp_ref,
            &golden(&g, "d3po_logp_ref")?,
            1e-5,
        )?;
        let (lp, backprop) = policy_log_probs(&policy, &ddim, &cond, &chains, &rows)?;
        check(
            &format!("{how}: D3PO log-probabilities"),
            &lp,
            &golden(&g, "d3po_logp")?,
            1e-5,
        )?;
        let n = pairs.len();
        let labels: Vec<(f64, f64)> = pairs.iter().map(|&(_, i)| LABELS[i]).collect();
        let loss = ClampedRatio {
            beta: 0.1,
            clip_eps: 0.02,
        }
        .labelled_pairs(
            &lp.narrow(0, 0, n)?,
            &lp.narrow(0, n, n)?,
            &lp_ref.narrow(0, 0, n)?,
            &lp_ref.narrow(0, n, n)?,
            &labels,
        )?;
        check(
            &format!("{how}: D3PO loss"),
            &loss.reshape(1)?,
            &golden(&g, "d3po_loss")?,
            1e-6,
        )?;
        check_lora_grads(
            &format!("{how}, D3PO"),
            &vars,
            &backprop.gradients(&loss)?,
            &g,
            "d3po_grad",
            D3PO_TOLERANCE,
        )?;

        // 3. DDPO: every transition against its sampling-time log-probability
        let rows: Vec<(usize, usize)> = (0..STEPS)
            .flat_map(|s| (0..2 * b).map(move |r| (s, r)))
            .collect();
        let (lp, backprop) = policy_log_probs(&policy, &ddim, &cond, &chains, &rows)?;
        check(
            &format!("{how}: DDPO log-probabilities"),
            &lp,
            &golden(&g, "ddpo_logp")?,
            1e-5,
        )?;
        let sampled = chains.gather(&rows, |s| &s.logp)?;
        let adv: Vec<f32> = rows.iter().map(|&(_, r)| ADVANTAGES[r]).collect();
        let adv = Tensor::from_vec(adv, rows.len(), &dev)?;
        let loss = Ppo::default().loss(&lp, &sampled, &adv)?;
        check(
            &format!("{how}: DDPO loss"),
            &loss.reshape(1)?,
            &golden(&g, "ddpo_loss")?,
            1e-5,
        )?;
        check_lora_grads(
            &format!("{how}, DDPO"),
            &vars,
            &backprop.gradients(&loss)?,
            &g,
            "ddpo_grad",
            DDPO_TOLERANCE,
        )?;
    }
    Ok(())
}
