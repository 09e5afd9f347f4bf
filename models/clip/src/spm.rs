//! The step-aware preference model (SPM) of SPO (spo-reference.md §3; RockeyCoss/SPO
//! `step_aware_preference_model.py`, `time_conditioned_clip.py`).
//!
//! A PickScore-style CLIP whose image tower is conditioned on the diffusion timestep:
//!
//! | symbol | here |
//! |---|---|
//! | e(t) ∈ ℝ²⁵⁶ | [`timestep_frequencies`]: `[cos(t·f), sin(t·f)]`, `f_i = exp(−ln(10⁴)·i/128)`, cos first |
//! | τ = MLP(e(t)) | `t_embedder.mlp.{0,2}`: Linear(256, D) → SiLU → Linear(D, D) |
//! | (sh₁, sc₁, g₁, sh₂, sc₂, g₂) | `vision_model.encoder.layers.N.adaLN_modulation.1`: Linear(D, 6D) on SiLU(τ) |
//! | h ← h + g₁·Attn(LN₁(h)(1+sc₁)+sh₁); h ← h + g₂·MLP(LN₂(h)(1+sc₂)+sh₂) | every vision layer |
//! | pooled ← LN_post(h_cls)(1+sc)+sh | `vision_model.adaLN_modulation.1`: Linear(D, 2D) |
//! | s(x, c, t) = exp(logit_scale)·cos(f_img(x, t), f_txt(c)) | [`Spm::score`], [`Spm::logits`] |
//!
//! [`init_spm_from_pickscore`] applies SPO's `init_adaln_paras`: adaLN weights 0, biases 0
//! except the gates g₁, g₂ (bias 1), the final adaLN 0, `t_embedder` weights N(0, 0.02²) and
//! biases 0 — so at step 0 the SPM is exactly its parent PickScore model. The released
//! checkpoints (`*_step-aware_preference_model.bin`) hold the same keys under `model.`.
//!
//! The paper's ablations (Table 5) are [`SpmVariant::NoTimeCondition`] (the same CLIP trained on
//! the same noisy-image data without the timestep) and [`SpmVariant::PickScore`] (the parent,
//! untrained); both are plain CLIP models that ignore `t`.

use std::path::Path;

use candle_core::{D, DType, Device, Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder, VarMap};
use spo_nn::linear::linear;
use spo_nn::{SeededRng, seeded_var_builder};

use crate::config::ClipConfig;
use crate::error::ClipError;
use crate::model::{ClipModel, l2_normalize};
use crate::scorers::cosine;
use crate::weights::{CheckedWeights, read_tensors, strip_prefix};

/// Width of the sinusoidal timestep features.
pub const FREQUENCY_DIM: usize = 256;

/// `(b,)` timesteps → `(b, 256)` DiT features `[cos(t·f), sin(t·f)]`, computed in f32 as
/// `torch.exp(-math.log(10000) * torch.arange(128) / 128)` is.
pub fn timestep_frequencies(timesteps: &[f32], device: &Device) -> Result<Tensor> {
    let half = FREQUENCY_DIM / 2;
    let c = -(10000f64.ln()) as f32;
    let freqs: Vec<f32> = (0..half)
        .map(|i| (i as f32 * c / half as f32).exp())
        .collect();
    let mut out = Vec::with_capacity(timesteps.len() * FREQUENCY_DIM);
    for &t in timesteps {
        out.extend(freqs.iter().map(|f| (t * f).cos()));
        out.extend(freqs.iter().map(|f| (t * f).sin()));
    }
    Tensor::from_vec(out, (timesteps.len(), FREQUENCY_DIM), device)
}

/// `t_embedder`: `mlp.0` Linear(256, D), SiLU, `mlp.2` Linear(D, D).
#[derive(Debug, Clone)]
pub struct TimestepEmbedder {
    mlp_0: Linear,
    mlp_2: Linear,
}

impl TimestepEmbedder {
    fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("mlp");
        Ok(Self {
            mlp_0: linear(FREQUENCY_DIM, dim, vb.pp("0"))?,
            mlp_2: linear(dim, dim, vb.pp("2"))?,
        })
    }

    /// `(b, 256)` features → `(b, D)` τ.
    pub fn forward(&self, freqs: &Tensor) -> Result<Tensor> {
        self.mlp_2.forward(&self.mlp_0.forward(freqs)?.silu()?)
    }
}

/// Which preference model (SPO Table 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpmVariant {
    /// The SPM: timestep-conditioned image tower.
    TimeConditioned,
    /// Ablation "w/o step condition": the CLIP architecture trained like the SPM, `t` ignored.
    NoTimeCondition,
    /// Ablation: the parent PickScore model, `t` ignored.
    PickScore,
}

/// A step-aware preference model or one of its ablations.
#[derive(Debug, Clone)]
pub struct Spm {
    clip: ClipModel,
    t_embedder: Option<TimestepEmbedder>,
    variant: SpmVariant,
}

impl Spm {
    /// Loads or creates the model under `vb` (HF names, no `model.` prefix).
    pub fn new(cfg: &ClipConfig, variant: SpmVariant, vb: VarBuilder) -> Result<Self> {
        let conditioned = variant == SpmVariant::TimeConditioned;
        let clip = ClipModel::build(cfg, conditioned, vb.clone())?;
        let t_embedder = if conditioned {
            Some(TimestepEmbedder::new(
                cfg.vision_config.hidden_size,
                vb.pp("t_embedder"),
            )?)
        } else {
            None
        };
        Ok(Self {
            clip,
            t_embedder,
            variant,
        })
    }

    /// The variant.
    pub fn variant(&self) -> SpmVariant {
        self.variant
    }

    /// The underlying CLIP (text tower, projections, `logit_scale`).
    pub fn clip(&self) -> &ClipModel {
        &self.clip
    }

    /// `(b, 3, s, s)` pixels at timesteps `t` (one per image) → `(b, P)` image embeddings.
    pub fn image_features(&self, pixels: &Tensor, timesteps: &[f32]) -> Result<Tensor> {
        let b = pixels.dim(0)?;
        if timesteps.len() != b {
            candle_core::bail!("{b} images but {} timesteps", timesteps.len());
        }
        match &self.t_embedder {
            Some(embedder) => {
                let freqs =
                    timestep_frequencies(timesteps, pixels.device())?.to_dtype(pixels.dtype())?;
                // SiLU(τ), shared by every adaLN layer: (b, D).
                let cond = embedder.forward(&freqs)?.silu()?;
                self.clip.image_features_conditioned(pixels, &cond)
            }
            None => self.clip.get_image_features(pixels),
        }
    }

    /// `(b, 77)` ids → `(b, P)` text embeddings.
    pub fn text_features(&self, ids: &Tensor) -> Result<Tensor> {
        self.clip.get_text_features(ids)
    }

    /// Differentiable `(b,)` logits `exp(logit_scale)·cos` for paired images and prompts.
    pub fn logits(&self, pixels: &Tensor, ids: &Tensor, timesteps: &[f32]) -> Result<Tensor> {
        let img = l2_normalize(&self.image_features(pixels, timesteps)?)?;
        let txt = l2_normalize(&self.text_features(ids)?)?;
        (img * txt)?
            .sum(D::Minus1)?
            .broadcast_mul(&self.clip.logit_scale().exp()?)
    }

    /// The preference scores of paired images and prompts, accumulated in f64.
    pub fn score(&self, pixels: &Tensor, ids: &Tensor, timesteps: &[f32]) -> Result<Vec<f64>> {
        let img = self
            .image_features(pixels, timesteps)?
            .to_dtype(DType::F64)?
            .to_vec2::<f64>()?;
        let txt = self
            .text_features(ids)?
            .to_dtype(DType::F64)?
            .to_vec2::<f64>()?;
        let scale = self
            .clip
            .logit_scale()
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?
            .exp();
        Ok(img
            .iter()
            .zip(&txt)
            .map(|(i, t)| scale * cosine(i, t))
            .collect())
    }
}

/// Loads a released SPM checkpoint (`torch.save` state dict or safetensors, keys under
/// `model.`) with the parent's architecture `cfg` (PickScore_v1's `config.json`).
pub fn load_spm(
    path: &Path,
    cfg: &ClipConfig,
    device: &Device,
) -> std::result::Result<Spm, ClipError> {
    let tensors = strip_prefix(read_tensors(path)?, "model.");
    CheckedWeights::new(path, tensors).build(DType::F32, device, |vb| {
        Spm::new(cfg, SpmVariant::TimeConditioned, vb)
    })
}

/// Adds the SPM's new modules to `varmap`, which must already hold the parent PickScore model
/// (e.g. from [`crate::load_hf_clip_trainable`]), initialised as SPO does so that the returned
/// SPM equals the parent exactly; `seed` draws the `t_embedder` weights.
pub fn init_spm_from_pickscore(
    varmap: &VarMap,
    cfg: &ClipConfig,
    seed: u64,
    device: &Device,
) -> Result<Spm> {
    let vb = seeded_var_builder(varmap, seed, DType::F32, device);
    let spm = Spm::new(cfg, SpmVariant::TimeConditioned, vb)?;
    let dim = cfg.vision_config.hidden_size;
    let mut rng = SeededRng::new(seed);
    let data = varmap
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("var map lock poisoned".into()))?;
    let set = |name: &str, value: Tensor| -> Result<()> {
        match data.get(name) {
            Some(var) => var.set(&value),
            None => candle_core::bail!("SPM variable `{name}` missing from the var map"),
        }
    };
    for i in 0..cfg.vision_config.num_hidden_layers {
        let p = format!("vision_model.encoder.layers.{i}.adaLN_modulation.1");
        set(
            &format!("{p}.weight"),
            Tensor::zeros((6 * dim, dim), DType::F32, device)?,
        )?;
        // (sh1, sc1, g1, sh2, sc2, g2): the gates start at 1.
        let bias: Vec<f32> = (0..6 * dim)
            .map(|j| {
                if j / dim == 2 || j / dim == 5 {
                    1.0
                } else {
                    0.0
                }
            })
            .collect();
        set(
            &format!("{p}.bias"),
            Tensor::from_vec(bias, 6 * dim, device)?,
        )?;
    }
    let p = "vision_model.adaLN_modulation.1";
    set(
        &format!("{p}.weight"),
        Tensor::zeros((2 * dim, dim), DType::F32, device)?,
    )?;
    set(
        &format!("{p}.bias"),
        Tensor::zeros(2 * dim, DType::F32, device)?,
    )?;
    for (index, fan_in) in [(0, FREQUENCY_DIM), (2, dim)] {
        let p = format!("t_embedder.mlp.{index}");
        set(
            &format!("{p}.weight"),
            rng.normal((dim, fan_in), 0.0, 0.02, DType::F32, device)?,
        )?;
        set(
            &format!("{p}.bias"),
            Tensor::zeros(dim, DType::F32, device)?,
        )?;
    }
    drop(data);
    Ok(spm)
}
