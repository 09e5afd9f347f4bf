//! One latent SPO step on the tiny SD-1.5 pipeline against a PyTorch re-implementation of the
//! SPO code's step (`tests/fixtures/sd/make_spo_step.py`): the candidates of one pool, their
//! decoded x₀-predictions scored by the released-layout SPM, the pair chosen, the clamped-ratio
//! loss and its LoRA gradients — each computed by the functions SPO's round calls
//! (`spo_methods::spo::rollout` / `train_round` draw the noise from spo-pipe's own RNG, so the
//! golden's noise is fed to the same pieces here). Errors are relative to the reference's
//! largest magnitude.

use candle_core::backprop::GradStore;
use candle_core::{Device, IndexOp, Tensor, Var};
use spo_clip::{ClipConfig, ClipTokenizer, TextCleaning, load_spm};
use spo_diffusion::weights::load_safetensors;
use spo_diffusion::{Ddim, NoiseSchedule};
use spo_methods::pairs::{Continuation, PairChoice, PairSelection};
use spo_methods::ratio::ClampedRatio;
use spo_methods::spo::{Denoiser, StepJudge, TrainingEps};
use spo_nn::SeededRng;
use spo_sd::{SdPolicy, SpmJudge};

mod common;

use common::{TestResult, check, check_lora_grads, fixtures, golden, tiny_sd15_with_lora};

const PROMPTS: [&str; 2] = ["a photo of a cat", "an astronaut riding a horse"];
const K: usize = 4;
const T: usize = 751;
const T_PREV: usize = 701;

#[test]
fn one_latent_spo_step_matches_the_pytorch_reimplementation() -> TestResult {
    let dev = Device::Cpu;
    let g = load_safetensors(&fixtures().join("sd/sd15_tiny_spo_step.safetensors"), &dev)?;
    let (sd, vars) = tiny_sd15_with_lora()?;
    let clip = fixtures().join("clip/models");
    let spm_config = ClipConfig::from_file(&clip.join("pickscore_tiny/config.json"))?;
    let spm = load_spm(&clip.join("spm_tiny.bin"), &spm_config, &dev)?;
    let tokenizer = ClipTokenizer::new(TextCleaning::Hf)?;
    // micro-batches of 3 split the pool of 8 unevenly: the chunks must join up exactly
    let policy = SdPolicy {
        sd: &sd,
        cfg: 5.0,
        micro_batch: 3,
        checkpointing: false,
    };
    let judge = SpmJudge {
        sd: &sd,
        spm: &spm,
        tokenizer: &tokenizer,
        micro_batch: 3,
    };
    let ddim = Ddim::new(NoiseSchedule::new(sd.scheduler().clone())?, 20, 1.0)?;
    assert!(ddim.timesteps().contains(&T) && ddim.prev_timestep(T) == T_PREV as i64);
    let b = PROMPTS.len();
    let texts_k: Vec<&str> = (0..K).flat_map(|_| PROMPTS).collect();

    // 1. a pool: k candidates from the same x_t, candidate-major (as `rollout` builds it)
    let x_t = golden(&g, "x_t")?;
    let (cond, cond_k) = (policy.encode(&PROMPTS)?, policy.encode(&texts_k)?);
    let eps = policy.eps_no_grad(&cond, &x_t, &[T; 2])?;
    let tr = ddim.transition(&eps, &[T; 2], &x_t)?;
    let noises = golden(&g, "noises")?;
    let children: Vec<Tensor> = (0..K)
        .map(|s| tr.sample(&noises.i(s)?))
        .collect::<Result<_, _>>()?;
    let cands = Tensor::cat(&children, 0)?;
    check("candidates", &cands, &golden(&g, "candidates")?, 1e-4)?;

    // 2. their x₀-predictions at t_prev, judged by the SPM through the VAE
    let eps_c = policy.eps_no_grad(&cond_k, &cands, &[T_PREV; K * 2])?;
    let (x0, _) = ddim.predict_x0_and_eps(&eps_c, &[T_PREV; K * 2], &cands)?;
    check("x0-predictions", &x0, &golden(&g, "x0")?, 1e-4)?;
    let scores = judge.scores(&x0, &texts_k, T_PREV)?;
    let scores_t = Tensor::new(scores.as_slice(), &dev)?;
    check("SPM scores", &scores_t, &golden(&g, "scores")?, 1e-4)?;

    // 3. best and worst per prompt past a zero threshold
    let selection = PairSelection {
        pair: PairChoice::BestWorst,
        continuation: Continuation::Random,
        threshold: 0.0,
    };
    let (win, lose) = (
        golden(&g, "win")?.to_vec1::<i64>()?,
        golden(&g, "lose")?.to_vec1::<i64>()?,
    );
    let mut rng = SeededRng::new(0);
    let mut x_w = Vec::new();
    let mut x_l = Vec::new();
    for i in 0..b {
        let per: Vec<f64> = (0..K).map(|c| scores[c * b + i]).collect();
        let pair = selection
            .pick(&per, &mut rng)
            .pair
            .ok_or("no pair passed")?;
        assert_eq!(
            (pair.0 as i64, pair.1 as i64),
            (win[i], lose[i]),
            "prompt {i}"
        );
        x_w.push(cands.i(pair.0 * b + i)?.unsqueeze(0)?);
        x_l.push(cands.i(pair.1 * b + i)?.unsqueeze(0)?);
    }

    // 4. the clamped-ratio loss over the winners' then the losers' transitions (as
    // `train_round` lays out a micro-batch), and its LoRA gradients
    let xt2 = Tensor::cat(&[&x_t, &x_t], 0)?;
    let xn = Tensor::cat(&[Tensor::cat(&x_w, 0)?, Tensor::cat(&x_l, 0)?], 0)?;
    let texts2: Vec<&str> = PROMPTS.iter().chain(PROMPTS.iter()).copied().collect();
    let prompts2 = policy.encode(&texts2)?;
    let logp = |reference: bool| -> Result<Tensor, Box<dyn std::error::Error>> {
        let eps = policy.eps(&prompts2, &xt2, &[T; 4], reference)?;
        Ok(ddim.transition(&eps, &[T; 4], &xt2)?.log_prob(&xn)?)
    };
    let (lp_ref, lp) = (logp(true)?, logp(false)?);
    check("log-probabilities", &lp, &golden(&g, "logp")?, 1e-5)?;
    check(
        "reference log-probabilities",
        &lp_ref,
        &golden(&g, "logp_ref")?,
        1e-5,
    )?;
    let out = ClampedRatio {
        beta: 10.0,
        clip_eps: 0.1,
    }
    .ordered_pairs(&lp, &lp_ref)?;
    check(
        "winners' ratios",
        &out.ratio_win,
        &golden(&g, "ratio_win")?,
        1e-4,
    )?;
    check(
        "losers' ratios",
        &out.ratio_lose,
        &golden(&g, "ratio_lose")?,
        1e-4,
    )?;
    check("loss", &out.loss.reshape(1)?, &golden(&g, "loss")?, 1e-4)?;
    let check_grads = |how: &str, grads: &GradStore| -> TestResult {
        check_lora_grads(how, &vars, grads, &g, "grad", 1e-4)
    };
    check_grads("graph", &out.loss.backward()?)?;

    // 5. the same gradients with the UNet checkpointed: ε detached, the loss differentiated up
    // to it, the UNet recomputed layer by layer (its 4 rows in micro-batches of 3 and 1)
    let checkpointed = SdPolicy {
        checkpointing: true,
        ..policy
    };
    let TrainingEps::Recomputed { eps, backward } =
        checkpointed.eps_for_training(&prompts2, &xt2, &[T; 4])?
    else {
        return Err("checkpointing gave ε with its graph".into());
    };
    let eps = Var::from_tensor(&eps)?.as_tensor().clone();
    let lp = ddim.transition(&eps, &[T; 4], &xt2)?.log_prob(&xn)?;
    let loss = ClampedRatio {
        beta: 10.0,
        clip_eps: 0.1,
    }
    .ordered_pairs(&lp, &lp_ref)?
    .loss;
    check(
        "checkpointed loss",
        &loss.reshape(1)?,
        &golden(&g, "loss")?,
        1e-4,
    )?;
    let g_eps = loss
        .backward()?
        .get(&eps)
        .ok_or("the loss reads ε")?
        .clone();
    check_grads("checkpointed", &backward(&g_eps)?)?;
    Ok(())
}
