//! `sd-spo`: SPO on real weights (spo-reference §2, SD-1.5): a LoRA on an SD-1.5-shaped
//! diffusers pipeline (a `hub` cell), rolled out in the VAE's latent space on the prompts of a
//! `prompts` cell (the SPO 4k), its pools judged by the released step-aware preference model
//! on the VAE-decoded x₀-predictions (`spo_sd::SpmJudge`), trained with the clamped-ratio loss
//! against the LoRA-off reference — the same round (`spo_methods::spo`), checkpointing and logs
//! as the in-world `spo` (`crate::spo::run_rounds`). Writes `lora.safetensors` (diffusers
//! loads it), `rounds.parquet`, the loss log and snapshots.
//!
//! `sd-gradspo` is GradSPO on the same footing (`crate::gradspo`'s moving-average rollout policy
//! and noise-target score).
//!
//! The SPM comes from two inputs or one: the released checkpoint (`spm_file`, e.g. from
//! `SPO-Diffusion-Models/Step-Aware_Preference_Models`) and its parent's architecture, an HF
//! CLIP `config.json` (PickScore_v1's).

use std::path::{Path, PathBuf};

use spo_clip::{ClipConfig, ClipTokenizer, TextCleaning, load_spm};
use spo_core::{Input, ParamSpec, StageContext, StageError, StageKind, Value};
use spo_diffusion::DiffusersFolder;
use spo_diffusion::{Ddim, NoiseSchedule};
use spo_methods::pairs::PairSelection;
use spo_methods::ratio::ClampedRatio;
use spo_methods::spo::SpoConfig;
use spo_sd::{SdPolicy, SpmJudge, Workload};

use crate::device::device;
use crate::error::{At, Result};
use crate::gradspo::{Ema, GradSpo, GradSpoParams};
use crate::real::{self, Precision};
use crate::spo::{Continuation, PairChoice, Rounds, run_rounds};

spo_core::stage_params! {
    /// The params of `sd-spo` (defaults: the paper's SD-1.5 run, spo-reference §2.8).
    pub struct SdSpoParams {
        /// the SPM checkpoint in its input (torch.save state dict or safetensors, keys `model.*`)
        spm_file: String = string("sd-v1-5_step-aware_preference_model.bin"),
        /// candidates per pool
        k: usize = int(4).range(2.0, 16.0),
        /// steps per pool before scoring; > 1 is MSPO
        j: usize = int(1).range(1.0, 20.0),
        /// transitions from t in [lo, hi] branch and train ([0, 751]: the code's divert_start_step 4)
        t_range: Vec<usize> = int_list(&[0, 751]).len(2).range(0.0, 1000.0),
        /// which candidate the chain continues from
        continuation: Continuation = choice_of(Continuation::Random),
        /// which two candidates form the pair
        pair: PairChoice = choice_of(PairChoice::BestWorst),
        /// keep a pair when p_win − p_lose exceeds this (SD-1.5: 0.3)
        threshold: f64 = float(0.3).range(0.0, 1.0),
        beta: f64 = float(10.0).range(0.0, 1e4),
        /// ratio clamp [1 − ε, 1 + ε]
        clip_eps: f64 = float(0.1).range(0.0, 1.0),
        /// sampling + training rounds (the paper: 10 epochs × 100 rounds of 40 prompts)
        rounds: usize = int(1000).range(0.0, 1e7),
        /// prompts per round (the paper: 10 per GPU on 4 GPUs)
        prompts: usize = int(40).range(1.0, 4096.0),
        /// pairs per micro-batch (the paper: 10 per GPU; 1 here fits one 80 GB GPU in f16,
        /// docs/real-weights.md "Device, precision and memory")
        train_batch: usize = int(1).range(1.0, 4096.0),
        /// latents per UNet call, and x̂₀-predictions decoded and judged at a time, in the
        /// rollouts (a round's pools hold k × prompts latents)
        micro_batch: usize = int(8).range(1.0, 4096.0),
        /// micro-batches per optimizer step, gradients averaged (the paper's SD-1.5 step
        /// averaged 4 GPUs × 10 pairs: 40 × 1 here; SDXL: 2 accumulated)
        accumulate: usize = int(40).range(1.0, 4096.0),
        /// passes over each round's pairs (the paper: 1)
        epochs: usize = int(1).range(1.0, 100.0),
        lr: f64 = float(6e-5).range(1e-9, 1.0),
        /// AdamW weight decay (the paper: 1e-4)
        weight_decay: f64 = float(1e-4).range(0.0, 1.0),
        /// LoRA rank (alpha = rank)
        rank: usize = int(4).range(1.0, 512.0),
        /// DDIM steps
        steps: usize = int(20).range(2.0, 1000.0),
        eta: f64 = float(1.0).range(0.01, 1.0),
        cfg: f64 = float(5.0).range(1.0, 100.0),
        /// rounds between checkpoints
        checkpoint_every: usize = int(10).range(1.0, 1e6),
        /// LoRA snapshots at evenly spaced rounds (0: none)
        snapshots: usize = int(4).range(0.0, 1000.0),
        /// the frozen weights' dtype (the LoRA and AdamW's state stay f32): the paper's fp16
        precision: Precision = choice_of(Precision::F16),
        /// recompute the UNet layer by layer in the backward instead of keeping its graph:
        /// the same gradients (within 1e-5 in the tests), a second forward per step, a fraction
        /// of the memory (docs/real-weights.md "Device, precision and memory")
        gradient_checkpointing: bool = bool(true),
    }
}

/// The `sd-spo` stage kind.
pub struct SdSpo;

impl StageKind for SdSpo {
    fn name(&self) -> &'static str {
        "sd-spo"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "SPO with LoRA on an SD-1.5-shaped diffusers pipeline in latent space (needs a hub pipeline, prompts, the SPM checkpoint and PickScore's config.json)"
    }
    fn params(&self) -> Vec<ParamSpec> {
        SdSpoParams::specs()
    }
    fn seeded(&self) -> bool {
        true
    }
    fn run(&self, cx: &mut StageContext) -> Result<(), StageError> {
        Ok(train(cx, None)?)
    }
}

/// The `sdxl-spo` stage kind: `sd-spo` with the SPO code's SDXL run as its defaults
/// (spo-reference §2.8–2.9): MSPO with j = 4 (`num_inner_step` 3), k = 2, threshold 0.4, LoRA
/// rank 64, lr 1e-5, 2 prompts on each of 4 GPUs per round (8) for 10 epochs of the 4k prompts
/// (5,000 rounds), an optimizer step per 16 pairs (4 GPUs × 2 pairs × 2 accumulated; here 1 ×
/// 16), the released SDXL SPM. It refuses an SD-1.5-shaped pipeline.
pub struct SdxlSpo;

/// The SDXL run's values of `sd-spo`'s params, where they differ from SD-1.5's.
fn sdxl_defaults() -> [(&'static str, Value); 9] {
    [
        (
            "spm_file",
            Value::Str("sdxl_step-aware_preference_model.bin".into()),
        ),
        ("k", Value::Int(2)),
        ("j", Value::Int(4)),
        ("threshold", Value::Float(0.4)),
        ("rank", Value::Int(64)),
        ("lr", Value::Float(1e-5)),
        ("prompts", Value::Int(8)),
        ("rounds", Value::Int(5000)),
        ("accumulate", Value::Int(16)),
    ]
}

/// `sd-spo`'s params with the SDXL run's defaults.
fn sdxl_specs() -> Vec<ParamSpec> {
    let mut specs = SdSpoParams::specs();
    let defaults = sdxl_defaults();
    for spec in &mut specs {
        if let Some((_, v)) = defaults.iter().find(|(n, _)| *n == spec.name) {
            spec.default = Some(v.clone());
        }
    }
    specs
}

impl StageKind for SdxlSpo {
    fn name(&self) -> &'static str {
        "sdxl-spo"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "SPO (MSPO, j = 4) with a rank-64 LoRA on an SDXL-shaped diffusers pipeline, the paper's SDXL defaults (needs what sd-spo needs, with the SDXL SPM)"
    }
    fn params(&self) -> Vec<ParamSpec> {
        sdxl_specs()
    }
    fn seeded(&self) -> bool {
        true
    }
    fn run(&self, cx: &mut StageContext) -> Result<(), StageError> {
        let pipeline = real::pipeline_input(cx)?;
        if !DiffusersFolder::open(&pipeline.dir)
            .map_err(crate::error::Error::from)?
            .has_component("text_encoder_2")
        {
            return Err(StageError::Input {
                need: pipeline.stage.clone(),
                message: format!(
                    "stage `{}` (sdxl-spo) needs an SDXL pipeline: {} has no text_encoder_2 in model_index.json; use sd-spo for SD-1.5",
                    cx.stage(),
                    pipeline.dir.join("model_index.json").display()
                ),
            });
        }
        Ok(train(cx, None)?)
    }
}

/// The `sd-gradspo` stage kind: GradSPO on real weights (`crate::gradspo`'s moving-average
/// rollout policy and noise-target score, around `sd-spo`'s round).
pub struct SdGradSpo;

impl StageKind for SdGradSpo {
    fn name(&self) -> &'static str {
        "sd-gradspo"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "GradSPO with LoRA on a diffusers pipeline in latent space (needs what sd-spo needs)"
    }
    fn params(&self) -> Vec<ParamSpec> {
        let mut p = SdSpoParams::specs();
        p.extend(GradSpoParams::specs());
        p
    }
    fn seeded(&self) -> bool {
        true
    }
    fn run(&self, cx: &mut StageContext) -> Result<(), StageError> {
        let settings = GradSpo::from_params(cx.params())?;
        Ok(train(cx, Some(settings))?)
    }
}

fn missing(stage: &str, what: String) -> crate::error::Error {
    StageError::Input {
        need: "spm".into(),
        message: format!("stage `{stage}` needs {what}"),
    }
    .into()
}

/// The SPM checkpoint and its parent's `config.json`, from the inputs other than `pipeline`.
fn spm_files(cx: &StageContext, pipeline: &Input, file: &str) -> Result<(PathBuf, PathBuf)> {
    let holding = |name: &str| real::weights_input(cx, pipeline, name)?.file(name).ok();
    let weights = holding(file).ok_or_else(|| {
        missing(
            cx.stage(),
            format!("an input holding the SPM checkpoint `{file}` (param spm_file)"),
        )
    })?;
    let config = holding("config.json").ok_or_else(|| {
        missing(
            cx.stage(),
            "an input holding the SPM's parent config.json (PickScore_v1's)".into(),
        )
    })?;
    Ok((weights, config))
}

/// Computes one cell of `sd-spo`, or of `sd-gradspo` with its settings.
fn train(cx: &mut StageContext, gradspo: Option<GradSpo>) -> Result<()> {
    let p = SdSpoParams::from_params(cx.params())?;
    if gradspo.is_some() {
        GradSpo::check_steps_per_pool(p.j)?;
    }
    let dev = device();
    let seed = cx.seed().unwrap_or(0);
    let pipeline = real::pipeline_input(cx)?.clone();
    let prompts = real::prompts(cx)?;
    let (spm_path, config_path) = spm_files(cx, &pipeline, &p.spm_file)?;
    let spm_config = ClipConfig::from_file(&config_path)?;
    let tokenizer = ClipTokenizer::new(TextCleaning::Hf)?;

    let dtype = p.precision.dtype(&dev)?;
    let work = Workload::Train {
        // a training step's UNet call takes both sides' x_t of each pair
        batch: 2 * p.train_batch,
        rollout_batch: p.micro_batch,
        rank: p.rank,
        checkpointing: p.gradient_checkpointing,
        guided: true,
    };
    // the SPM runs in f32: about its checkpoint's size (the released ones are f32)
    let spm_bytes = std::fs::metadata(&spm_path)
        .map_err(|e| StageError::io(&spm_path, e))?
        .len();
    real::check_memory(
        cx,
        &DiffusersFolder::open(&pipeline.dir)?,
        dtype,
        work,
        spm_bytes,
    )?;
    let spm = load_spm(&spm_path, &spm_config, &dev).at(&spm_path)?;
    let (sd, mut lora_vars, mut opt) =
        real::lora_pipeline(&pipeline.dir, dtype, p.rank, seed, p.lr, p.weight_decay)?;
    let ddim = Ddim::new(NoiseSchedule::new(sd.scheduler().clone())?, p.steps, p.eta)?;
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
        accumulate: p.accumulate,
        epochs: p.epochs,
        gradspo_scale: gradspo.map(|g| g.grad_scale),
    };
    // GradSPO rolls out with a moving average of the policy, checkpointed with it
    let ema = gradspo
        .map(|g| Ema::attach(&lora_vars, g.ema_decay))
        .transpose()?;
    let name = if gradspo.is_some() {
        "sd-gradspo"
    } else {
        "sd-spo"
    };
    let den = SdPolicy {
        sd: &sd,
        cfg: p.cfg,
        micro_batch: p.micro_batch,
        checkpointing: p.gradient_checkpointing,
    };
    let judge = SpmJudge {
        sd: &sd,
        spm: &spm,
        tokenizer: &tokenizer,
        micro_batch: p.micro_batch,
    };
    let pool: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let save_lora = |path: &Path| sd.unet().save_lora(path).at(path);
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
        (&den, &judge),
        (&ddim, &cfg),
        ema,
        (&mut lora_vars, &mut opt),
        &save_lora,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdxl_spo_sets_every_sdxl_default_and_keeps_the_rest() {
        let (sd, xl) = (SdSpoParams::specs(), sdxl_specs());
        assert_eq!(sd.len(), xl.len());
        for (name, value) in sdxl_defaults() {
            let spec = xl
                .iter()
                .find(|p| p.name == name)
                .expect("a param of sd-spo");
            assert_eq!(spec.default.as_ref(), Some(&value), "{name}");
        }
        let changed = sd
            .iter()
            .zip(&xl)
            .filter(|(a, b)| a.default != b.default)
            .count();
        assert_eq!(changed, sdxl_defaults().len());
        // the defaults pass the params' own checks (ranges, types)
        let p = SdSpoParams::from_params(&spo_core::Params::resolve(&xl, &[]).unwrap()).unwrap();
        assert_eq!((p.rank, p.j, p.k, p.accumulate), (64, 4, 2, 16));
    }
}
