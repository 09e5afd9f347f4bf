//! Noise schedules of DDPM-style diffusion: βₜ, ᾱₜ = Πₛ≤ₜ(1 − βₛ), and forward noising.
//!
//! Follows diffusers' `DDIMScheduler.__init__` (huggingface/diffusers
//! `src/diffusers/schedulers/scheduling_ddim.py`): `linear` is `linspace(β₀, β₁, T)`,
//! `scaled_linear` (Stable Diffusion) is `linspace(√β₀, √β₁, T)²`. The table reproduces
//! diffusers' f32 values bit for bit (torch's f32 `linspace`, whose vectorised kernel fuses the
//! multiply-add, and its `cumprod`, which accumulates in f64): DDIM log-probabilities at small σ
//! amplify ᾱ differences by 1/σ², so an f64 table would differ from diffusers by ~1e-5.
//! candle-transformers' `squaredcos_cap_v2` is broken (integer division); it is not offered here.

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{DiffusionError, Result};

/// How βₜ grows over the training timesteps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    /// `linspace(beta_start, beta_end, T)`.
    Linear,
    /// `linspace(√beta_start, √beta_end, T)²` (Stable Diffusion).
    ScaledLinear,
}

/// What the denoiser predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    /// The added noise ε (SD 1.5, SDXL).
    Epsilon,
    /// v = √ᾱ·ε − √(1−ᾱ)·x₀ (SD 2.x 768).
    VPrediction,
    /// The clean sample x₀.
    Sample,
}

/// How inference timesteps are spaced (Table 2 of arXiv:2305.08891).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    /// `i·(T // n) + steps_offset` (diffusers' default; SD 1.5 → 951, 901, …, 1 for n = 20).
    Leading,
    /// `round(T − i·T/n) − 1`.
    Trailing,
    /// `round(linspace(0, T − 1, n))`, descending.
    Linspace,
}

fn default_train_steps() -> usize {
    1000
}
fn default_beta_start() -> f64 {
    1e-4
}
fn default_beta_end() -> f64 {
    0.02
}
fn default_beta_schedule() -> BetaSchedule {
    BetaSchedule::Linear
}
fn default_true() -> bool {
    true
}
fn default_prediction() -> PredictionType {
    PredictionType::Epsilon
}
fn default_spacing() -> TimestepSpacing {
    TimestepSpacing::Leading
}
fn default_clip_range() -> f64 {
    1.0
}

/// A diffusers `scheduler_config.json`. Missing fields take `DDIMScheduler`'s defaults, as
/// `DDIMScheduler.from_config` does; [`SchedulerConfig::sd15`] is Stable Diffusion 1.5's file.
/// Unknown fields (e.g. PNDM's `skip_prk_steps`) are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchedulerConfig {
    /// Number of training timesteps T (default 1000).
    #[serde(default = "default_train_steps")]
    pub num_train_timesteps: usize,
    /// β at t = 0 (default 1e-4).
    #[serde(default = "default_beta_start")]
    pub beta_start: f64,
    /// β at t = T − 1 (default 0.02).
    #[serde(default = "default_beta_end")]
    pub beta_end: f64,
    /// The β curve (default `linear`).
    #[serde(default = "default_beta_schedule")]
    pub beta_schedule: BetaSchedule,
    /// Use ᾱ = 1 (instead of ᾱ₀) after the last step (default true; SD 1.5: false).
    #[serde(default = "default_true")]
    pub set_alpha_to_one: bool,
    /// Added to every leading-spaced timestep (default 0; SD 1.5: 1).
    #[serde(default)]
    pub steps_offset: usize,
    /// What the UNet predicts (default `epsilon`).
    #[serde(default = "default_prediction")]
    pub prediction_type: PredictionType,
    /// Clamp predicted x₀ to ±`clip_sample_range` (default true; SD 1.5: false).
    #[serde(default = "default_true")]
    pub clip_sample: bool,
    /// Bound of the x₀ clamp (default 1).
    #[serde(default = "default_clip_range")]
    pub clip_sample_range: f64,
    /// Spacing of inference timesteps (default `leading`).
    #[serde(default = "default_spacing")]
    pub timestep_spacing: TimestepSpacing,
    /// Dynamic thresholding (Imagen); only `false` is supported.
    #[serde(default)]
    pub thresholding: bool,
    /// Zero-terminal-SNR rescaling; only `false` is supported.
    #[serde(default)]
    pub rescale_betas_zero_snr: bool,
    /// Explicit β table; only `null` is supported.
    #[serde(default)]
    pub trained_betas: Option<Vec<f64>>,
}

impl SchedulerConfig {
    /// Stable Diffusion 1.5 (`runwayml/stable-diffusion-v1-5/scheduler/scheduler_config.json`);
    /// SDXL base uses the same values.
    pub fn sd15() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            set_alpha_to_one: false,
            steps_offset: 1,
            prediction_type: PredictionType::Epsilon,
            clip_sample: false,
            clip_sample_range: 1.0,
            timestep_spacing: TimestepSpacing::Leading,
            thresholding: false,
            rescale_betas_zero_snr: false,
            trained_betas: None,
        }
    }

    /// Errors on options this implementation does not provide.
    pub fn validate(&self) -> Result<()> {
        let unsupported = |field: &str, value: String| DiffusionError::Unsupported {
            field: field.into(),
            value,
            hint: "not implemented by spo-diffusion".into(),
        };
        if self.thresholding {
            return Err(unsupported("thresholding", "true".into()));
        }
        if self.rescale_betas_zero_snr {
            return Err(unsupported("rescale_betas_zero_snr", "true".into()));
        }
        if self.trained_betas.is_some() {
            return Err(unsupported("trained_betas", "a table".into()));
        }
        if self.num_train_timesteps < 2 {
            return Err(DiffusionError::Unsupported {
                field: "num_train_timesteps".into(),
                value: self.num_train_timesteps.to_string(),
                hint: "need at least 2".into(),
            });
        }
        Ok(())
    }
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self::sd15()
    }
}

/// The ᾱ table of a schedule, with per-sample forward noising.
#[derive(Debug, Clone)]
pub struct NoiseSchedule {
    config: SchedulerConfig,
    alphas_cumprod: Vec<f64>,
}

/// `torch.linspace(start, end, n, dtype=torch.float32)`: the first half counts up from
/// `start`, the second half down from `end`, each as one fused multiply-add rounded to f32.
fn torch_linspace_f32(start: f64, end: f64, n: usize) -> Vec<f32> {
    let (s, e) = (start as f32, end as f32);
    let step = (e - s) / (n - 1) as f32;
    (0..n)
        .map(|i| {
            if i < n / 2 {
                (s as f64 + step as f64 * i as f64) as f32
            } else {
                (e as f64 - step as f64 * (n - 1 - i) as f64) as f32
            }
        })
        .collect()
}

impl NoiseSchedule {
    /// Computes βₜ and ᾱₜ for `config` (validated first).
    pub fn new(config: SchedulerConfig) -> Result<Self> {
        config.validate()?;
        let n = config.num_train_timesteps;
        let betas: Vec<f32> = match config.beta_schedule {
            BetaSchedule::Linear => torch_linspace_f32(config.beta_start, config.beta_end, n),
            BetaSchedule::ScaledLinear => {
                torch_linspace_f32(config.beta_start.sqrt(), config.beta_end.sqrt(), n)
                    .into_iter()
                    .map(|b| b * b)
                    .collect()
            }
        };
        // ᾱₜ = Π_{s ≤ t} (1 − β_s): torch's f32 cumprod accumulates in f64 and rounds each entry
        let alphas_cumprod = betas
            .iter()
            .scan(1.0f64, |acc, &beta| {
                *acc *= (1.0f32 - beta) as f64;
                Some(*acc as f32 as f64)
            })
            .collect();
        Ok(Self {
            config,
            alphas_cumprod,
        })
    }

    /// The config this schedule was built from.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// ᾱₜ for t in `0..T`.
    pub fn alphas_cumprod(&self) -> &[f64] {
        &self.alphas_cumprod
    }

    /// ᾱ at timestep `t`; a negative `t` (before the first training step) gives
    /// `final_alpha_cumprod`: 1 if `set_alpha_to_one`, else ᾱ₀.
    pub fn alpha_bar(&self, t: i64) -> Result<f64> {
        if t < 0 {
            return Ok(if self.config.set_alpha_to_one {
                1.0
            } else {
                self.alphas_cumprod[0]
            });
        }
        self.alphas_cumprod
            .get(t as usize)
            .copied()
            .ok_or_else(|| DiffusionError::Unsupported {
                field: "timestep".into(),
                value: t.to_string(),
                hint: format!(
                    "must be < num_train_timesteps = {}",
                    self.alphas_cumprod.len()
                ),
            })
    }

    /// `(b, 1, …, 1)` tensor of `f(ᾱ_{t_i})`, broadcastable against a `rank`-dimensional batch.
    pub(crate) fn per_sample(
        &self,
        timesteps: &[i64],
        rank: usize,
        f: impl Fn(f64) -> f64,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let values = timesteps
            .iter()
            .map(|&t| self.alpha_bar(t).map(&f))
            .collect::<Result<Vec<f64>>>()?;
        let mut shape = vec![1usize; rank.max(1)];
        shape[0] = values.len();
        Ok(Tensor::from_vec(values, shape, device)?.to_dtype(dtype)?)
    }

    /// Forward noising `x_t = √ᾱₜ·x₀ + √(1 − ᾱₜ)·ε` with one timestep per sample
    /// (`timesteps`: integer tensor of shape `(b,)`).
    pub fn add_noise(&self, x0: &Tensor, noise: &Tensor, timesteps: &Tensor) -> Result<Tensor> {
        let ts: Vec<i64> = timesteps.to_dtype(DType::I64)?.to_vec1()?;
        let (dtype, device, rank) = (x0.dtype(), x0.device(), x0.rank());
        let sqrt_ab = self.per_sample(&ts, rank, f64::sqrt, dtype, device)?;
        let sqrt_1m_ab = self.per_sample(&ts, rank, |a| (1.0 - a).sqrt(), dtype, device)?;
        Ok((x0.broadcast_mul(&sqrt_ab)? + noise.broadcast_mul(&sqrt_1m_ab)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sd15_config_json_deserialises_with_pndm_fields() -> Result<()> {
        // runwayml/stable-diffusion-v1-5/scheduler/scheduler_config.json
        let json = r#"{"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0",
            "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
            "num_train_timesteps": 1000, "set_alpha_to_one": false, "skip_prk_steps": true,
            "steps_offset": 1, "trained_betas": null, "clip_sample": false}"#;
        let parsed: SchedulerConfig =
            serde_json::from_str(json).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        assert_eq!(parsed, SchedulerConfig::sd15());
        Ok(())
    }

    #[test]
    fn endpoints_of_both_schedules() -> Result<()> {
        let sd = NoiseSchedule::new(SchedulerConfig::sd15())?;
        // ᾱ₀ = 1 − β₀ = 0.99915; ᾱ_999 = 0.00466010 for scaled_linear (numpy, f64).
        assert!((sd.alphas_cumprod()[0] - 0.99915).abs() < 1e-7);
        assert!((sd.alphas_cumprod()[999] - 0.004_660_098_5).abs() < 1e-8);
        let linear = NoiseSchedule::new(SchedulerConfig {
            beta_schedule: BetaSchedule::Linear,
            beta_start: 1e-4,
            beta_end: 0.02,
            ..SchedulerConfig::sd15()
        })?;
        assert!((linear.alphas_cumprod()[0] - 0.9999).abs() < 1e-7);
        assert!((linear.alpha_bar(-1)? - 0.9999).abs() < 1e-7);
        assert!(linear.alpha_bar(1000).is_err());
        Ok(())
    }

    #[test]
    fn add_noise_uses_each_samples_timestep() -> Result<()> {
        let s = NoiseSchedule::new(SchedulerConfig::sd15())?;
        let dev = Device::Cpu;
        let x0 = Tensor::ones((2, 1, 2, 2), DType::F32, &dev)?;
        let noise = Tensor::zeros((2, 1, 2, 2), DType::F32, &dev)?;
        let t = Tensor::new(&[0i64, 500], &dev)?;
        let xt = s.add_noise(&x0, &noise, &t)?;
        let got: Vec<f32> = xt.flatten_from(1)?.max(1)?.to_vec1()?;
        assert!((got[0] as f64 - s.alphas_cumprod()[0].sqrt()).abs() < 1e-6);
        assert!((got[1] as f64 - s.alphas_cumprod()[500].sqrt()).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn unsupported_options_are_rejected() {
        let cfg = SchedulerConfig {
            thresholding: true,
            ..SchedulerConfig::sd15()
        };
        assert!(NoiseSchedule::new(cfg).is_err());
    }
}
