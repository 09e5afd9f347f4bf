//! DDIM(η) transitions with their Gaussian mean, standard deviation and log-probability.
//!
//! Port of diffusers' `DDIMScheduler.step` (huggingface/diffusers
//! `src/diffusers/schedulers/scheduling_ddim.py`) in the form DDPO/SPO use it
//! (kvablack/ddpo-pytorch `ddpo_pytorch/diffusers_patch/ddim_with_logprob.py`):
//! - one timestep per sample (a batch may mix timesteps);
//! - the transition is returned as N(μ, σₜ²) so a given x_{t−1} can be scored;
//! - the log-probability is the Gaussian density **averaged** over all non-batch elements.
//!
//! Notation (DDIM paper, arXiv:2010.02502, eq. 12 and 16):
//!
//! | code | symbol |
//! |---|---|
//! | `alpha_t`, `alpha_prev` | ᾱₜ, ᾱ_{t−Δ} |
//! | `pred_original_sample` | x̂₀ |
//! | `pred_epsilon` | ε̂ |
//! | `std` | σₜ = η·√((1−ᾱ_prev)/(1−ᾱₜ))·√(1−ᾱₜ/ᾱ_prev) |
//! | `mean` | μ = √ᾱ_prev·x̂₀ + √(1−ᾱ_prev−σₜ²)·ε̂ |
//!
//! The previous timestep is t − T/n. When it is negative (the last step), ᾱ_prev is
//! `final_alpha_cumprod` (1 if `set_alpha_to_one`, else ᾱ₀), as in diffusers; with SD's
//! `set_alpha_to_one = false` this equals clamping the previous timestep at 0.

use candle_core::{DType, Tensor};

use crate::error::{DiffusionError, Result};
use crate::schedule::{NoiseSchedule, PredictionType, TimestepSpacing};

/// A DDIM sampler over `num_inference_steps` timesteps of a [`NoiseSchedule`].
#[derive(Debug, Clone)]
pub struct Ddim {
    schedule: NoiseSchedule,
    timesteps: Vec<usize>,
    step_ratio: usize,
    eta: f64,
}

/// The Gaussian DDIM transition p(x_{t−1} | x_t) = N(mean, std²) of one batch.
#[derive(Debug, Clone)]
pub struct DdimTransition {
    /// μ, shaped like the sample.
    pub mean: Tensor,
    /// σₜ per sample, shape `(b,)`, in f32.
    pub std: Tensor,
    /// x̂₀, shaped like the sample.
    pub pred_original_sample: Tensor,
    /// ε̂, shaped like the sample.
    pub pred_epsilon: Tensor,
}

impl Ddim {
    /// DDIM with `num_inference_steps` steps and stochasticity `eta` (0 = deterministic DDIM,
    /// 1 = DDPM-like; SPO uses 1).
    pub fn new(schedule: NoiseSchedule, num_inference_steps: usize, eta: f64) -> Result<Self> {
        let cfg = schedule.config();
        let train = cfg.num_train_timesteps;
        if num_inference_steps == 0 || num_inference_steps > train {
            return Err(DiffusionError::Unsupported {
                field: "num_inference_steps".into(),
                value: num_inference_steps.to_string(),
                hint: format!("must be in 1..={train}"),
            });
        }
        let n = num_inference_steps;
        let timesteps: Vec<usize> = match cfg.timestep_spacing {
            // (arange(n) · (T // n)) reversed, + steps_offset
            TimestepSpacing::Leading => (0..n)
                .rev()
                .map(|i| i * (train / n) + cfg.steps_offset)
                .collect(),
            // round(arange(T, 0, −T/n)) − 1, numpy rounding (half to even)
            TimestepSpacing::Trailing => (0..n)
                .map(|i| {
                    (train as f64 - i as f64 * train as f64 / n as f64).round_ties_even() as usize
                        - 1
                })
                .collect(),
            // round(linspace(0, T − 1, n)) reversed, numpy rounding (half to even)
            TimestepSpacing::Linspace => (0..n)
                .rev()
                .map(|i| {
                    if n == 1 {
                        0
                    } else {
                        (i as f64 * (train - 1) as f64 / (n - 1) as f64).round_ties_even() as usize
                    }
                })
                .collect(),
        };
        if let Some(&bad) = timesteps.iter().find(|&&t| t >= train) {
            return Err(DiffusionError::Unsupported {
                field: "steps_offset".into(),
                value: cfg.steps_offset.to_string(),
                hint: format!("gives timestep {bad} ≥ num_train_timesteps {train}"),
            });
        }
        Ok(Self {
            step_ratio: train / n,
            schedule,
            timesteps,
            eta,
        })
    }

    /// The inference timesteps, descending (SD 1.5, 20 steps: 951, 901, …, 51, 1).
    pub fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    /// The noise schedule.
    pub fn schedule(&self) -> &NoiseSchedule {
        &self.schedule
    }

    /// η.
    pub fn eta(&self) -> f64 {
        self.eta
    }

    /// The timestep a step from `t` lands on: t − T/n (negative after the last step).
    pub fn prev_timestep(&self, t: usize) -> i64 {
        t as i64 - self.step_ratio as i64
    }

    /// σₜ² / η² = (1−ᾱ_prev)/(1−ᾱₜ)·(1−ᾱₜ/ᾱ_prev), the DDPM posterior variance (DDIM eq. 16).
    pub fn variance(&self, t: usize) -> Result<f64> {
        let alpha_t = self.schedule.alpha_bar(t as i64)?;
        let alpha_prev = self.schedule.alpha_bar(self.prev_timestep(t))?;
        Ok((1.0 - alpha_prev) / (1.0 - alpha_t) * (1.0 - alpha_t / alpha_prev))
    }

    /// x̂₀ and ε̂ from the model output at per-sample timesteps `timesteps` (`(b,)` values).
    pub fn predict_x0_and_eps(
        &self,
        model_output: &Tensor,
        timesteps: &[usize],
        sample: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let ts: Vec<i64> = timesteps.iter().map(|&t| t as i64).collect();
        let (dtype, dev, rank) = (sample.dtype(), sample.device(), sample.rank());
        let sqrt_a = self.schedule.per_sample(&ts, rank, f64::sqrt, dtype, dev)?;
        let sqrt_1ma = self
            .schedule
            .per_sample(&ts, rank, |a| (1.0 - a).sqrt(), dtype, dev)?;
        let (x0, eps) = match self.schedule.config().prediction_type {
            // x̂₀ = (x_t − √(1−ᾱₜ)·ε̂) / √ᾱₜ
            PredictionType::Epsilon => {
                let x0 =
                    (sample - model_output.broadcast_mul(&sqrt_1ma)?)?.broadcast_div(&sqrt_a)?;
                (x0, model_output.clone())
            }
            // ε̂ = (x_t − √ᾱₜ·x̂₀) / √(1−ᾱₜ)
            PredictionType::Sample => {
                let eps =
                    (sample - model_output.broadcast_mul(&sqrt_a)?)?.broadcast_div(&sqrt_1ma)?;
                (model_output.clone(), eps)
            }
            // x̂₀ = √ᾱₜ·x_t − √(1−ᾱₜ)·v ;  ε̂ = √ᾱₜ·v + √(1−ᾱₜ)·x_t
            PredictionType::VPrediction => {
                let x0 =
                    (sample.broadcast_mul(&sqrt_a)? - model_output.broadcast_mul(&sqrt_1ma)?)?;
                let eps =
                    (model_output.broadcast_mul(&sqrt_a)? + sample.broadcast_mul(&sqrt_1ma)?)?;
                (x0, eps)
            }
        };
        let cfg = self.schedule.config();
        if cfg.clip_sample {
            let r = cfg.clip_sample_range;
            return Ok((x0.clamp(-r, r)?, eps));
        }
        Ok((x0, eps))
    }

    /// The transition N(μ, σₜ²) from `sample` = x_t given the model output, one timestep per
    /// sample (diffusers `step`, DDIM eq. 12, steps 1–6).
    pub fn transition(
        &self,
        model_output: &Tensor,
        timesteps: &[usize],
        sample: &Tensor,
    ) -> Result<DdimTransition> {
        let (b, rank) = (sample.dim(0)?, sample.rank());
        if timesteps.len() != b {
            return Err(candle_core::Error::Msg(format!(
                "ddim: {} timesteps for a batch of {b}",
                timesteps.len()
            ))
            .into());
        }
        let (dtype, dev) = (sample.dtype(), sample.device());
        // 1-3. x̂₀ and ε̂ from the model output.
        let (x0, eps) = self.predict_x0_and_eps(model_output, timesteps, sample)?;
        // 4. σₜ = η·√variance, per sample.
        let stds = timesteps
            .iter()
            .map(|&t| Ok(self.eta * self.variance(t)?.sqrt()))
            .collect::<Result<Vec<f64>>>()?;
        let prev: Vec<i64> = timesteps.iter().map(|&t| self.prev_timestep(t)).collect();
        let sqrt_ap = self
            .schedule
            .per_sample(&prev, rank, f64::sqrt, dtype, dev)?;
        let alpha_prev: Vec<f64> = prev
            .iter()
            .map(|&t| self.schedule.alpha_bar(t))
            .collect::<Result<_>>()?;
        // 5. direction coefficient √(1 − ᾱ_prev − σₜ²)
        let dir: Vec<f64> = alpha_prev
            .iter()
            .zip(&stds)
            .map(|(a, s)| (1.0 - a - s * s).max(0.0).sqrt())
            .collect();
        let mut shape = vec![1usize; rank];
        shape[0] = b;
        let dir = Tensor::from_vec(dir, shape.as_slice(), dev)?.to_dtype(dtype)?;
        // 6. μ = √ᾱ_prev·x̂₀ + √(1 − ᾱ_prev − σₜ²)·ε̂   (DDIM eq. 12)
        let mean = (x0.broadcast_mul(&sqrt_ap)? + eps.broadcast_mul(&dir)?)?;
        let std = Tensor::from_vec(stds, b, dev)?.to_dtype(DType::F32)?;
        Ok(DdimTransition {
            mean,
            std,
            pred_original_sample: x0,
            pred_epsilon: eps,
        })
    }

    /// One DDIM step: the transition and x_{t−1} = μ + σₜ·z. `noise` (z, shaped like the
    /// sample) is required when η > 0; pass draws from a seeded [`spo_nn::SeededRng`].
    pub fn step(
        &self,
        model_output: &Tensor,
        timesteps: &[usize],
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<(Tensor, DdimTransition)> {
        let transition = self.transition(model_output, timesteps, sample)?;
        let prev_sample = match noise {
            Some(z) => transition.sample(z)?,
            None if self.eta == 0.0 => transition.mean.clone(),
            None => {
                return Err(candle_core::Error::Msg(
                    "ddim: eta > 0 needs a noise tensor (draw it from a SeededRng)".into(),
                )
                .into());
            }
        };
        Ok((prev_sample, transition))
    }
}

impl DdimTransition {
    /// `std` reshaped to `(b, 1, …, 1)` in `like`'s dtype.
    fn std_broadcast(&self, like: &Tensor) -> Result<Tensor> {
        let mut shape = vec![1usize; like.rank()];
        shape[0] = like.dim(0)?;
        Ok(self.std.reshape(shape)?.to_dtype(like.dtype())?)
    }

    /// x_{t−1} = μ + σₜ·z (DDIM eq. 12, step 7).
    pub fn sample(&self, noise: &Tensor) -> Result<Tensor> {
        let std = self.std_broadcast(&self.mean)?;
        Ok((&self.mean + noise.broadcast_mul(&std)?)?)
    }

    /// log N(x_prev; μ, σₜ²) averaged over all non-batch elements, shape `(b,)`, in f32:
    /// `mean[−(x−μ)²/(2σ²) − log σ − log √(2π)]`. `x_prev` is detached, as in DDPO/SPO; the
    /// gradient flows through μ. Requires σₜ > 0 (η > 0).
    pub fn log_prob(&self, x_prev: &Tensor) -> Result<Tensor> {
        let x = x_prev.detach().to_dtype(DType::F32)?;
        let mean = self.mean.to_dtype(DType::F32)?;
        let std = self.std_broadcast(&x)?;
        let var = std.sqr()?;
        // −(x − μ)² / (2σ²) − log σ − log √(2π)
        let sq = (x - mean)?.sqr()?;
        let log_sqrt_2pi = (2.0 * std::f64::consts::PI).sqrt().ln();
        let lp = ((sq
            .broadcast_div(&(var * 2.0)?)?
            .neg()?
            .broadcast_sub(&std.log()?))?
            - log_sqrt_2pi)?;
        // mean over all but the batch dimension
        Ok(lp.flatten_from(1)?.mean(1)?)
    }
}

/// Classifier-free guidance: ε = ε_u + w·(ε_c − ε_u).
pub fn classifier_free_guidance(uncond: &Tensor, cond: &Tensor, scale: f64) -> Result<Tensor> {
    Ok((uncond + ((cond - uncond)? * scale)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::SchedulerConfig;
    use candle_core::Device;

    fn sd15_ddim() -> Result<Ddim> {
        Ddim::new(NoiseSchedule::new(SchedulerConfig::sd15())?, 20, 1.0)
    }

    #[test]
    fn leading_timesteps_with_offset() -> Result<()> {
        let ddim = sd15_ddim()?;
        let expected: Vec<usize> = (0..20).rev().map(|i| 50 * i + 1).collect();
        assert_eq!(ddim.timesteps(), expected.as_slice());
        assert_eq!(ddim.timesteps()[0], 951);
        assert_eq!(ddim.prev_timestep(1), -49);
        Ok(())
    }

    #[test]
    fn trailing_and_linspace_timesteps() -> Result<()> {
        let trailing = Ddim::new(
            NoiseSchedule::new(SchedulerConfig {
                timestep_spacing: TimestepSpacing::Trailing,
                ..SchedulerConfig::sd15()
            })?,
            4,
            0.0,
        )?;
        assert_eq!(trailing.timesteps(), &[999, 749, 499, 249]);
        let linspace = Ddim::new(
            NoiseSchedule::new(SchedulerConfig {
                timestep_spacing: TimestepSpacing::Linspace,
                ..SchedulerConfig::sd15()
            })?,
            4,
            0.0,
        )?;
        assert_eq!(linspace.timesteps(), &[999, 666, 333, 0]);
        // 16 steps hit exact halves (937.5, 812.5, …): numpy rounds them to even.
        // diffusers 0.42.1 DDIMScheduler(timestep_spacing=…).set_timesteps(16):
        let sixteen = |spacing| -> Result<Vec<usize>> {
            let cfg = SchedulerConfig {
                timestep_spacing: spacing,
                ..SchedulerConfig::sd15()
            };
            Ok(Ddim::new(NoiseSchedule::new(cfg)?, 16, 0.0)?
                .timesteps()
                .to_vec())
        };
        assert_eq!(
            sixteen(TimestepSpacing::Trailing)?,
            [
                999, 937, 874, 811, 749, 687, 624, 561, 499, 437, 374, 311, 249, 187, 124, 61
            ]
        );
        assert_eq!(
            sixteen(TimestepSpacing::Linspace)?,
            [
                999, 932, 866, 799, 733, 666, 599, 533, 466, 400, 333, 266, 200, 133, 67, 0
            ]
        );
        Ok(())
    }

    /// spo-reference.md appendix A (SD 1.5 schedule, 20 steps, η = 1).
    #[test]
    fn appendix_a_alpha_bar_and_sigma_table() -> Result<()> {
        let ddim = sd15_ddim()?;
        let table = [
            (951, 0.00816, 0.01400, 0.64439),
            (801, 0.03655, 0.05572, 0.58073),
            (751, 0.05572, 0.08192, 0.55762),
            (501, 0.27500, 0.34556, 0.42932),
            (251, 0.67215, 0.75214, 0.28355),
            (101, 0.89298, 0.95052, 0.16729),
            (51, 0.95052, 0.99830, 0.04060),
            (1, 0.99830, 0.99915, 0.02065),
        ];
        let s = ddim.schedule();
        // The table is rounded to 5 decimals: half a unit in the last place, plus f32 noise.
        let tol = 5.1e-6;
        for (t, alpha_t, alpha_prev, sigma) in table {
            let got_t = s.alpha_bar(t)?;
            let got_prev = s.alpha_bar(ddim.prev_timestep(t as usize))?;
            let got_sigma = ddim.variance(t as usize)?.sqrt();
            assert!((got_t - alpha_t).abs() < tol, "ᾱ_{t}: {got_t}");
            assert!(
                (got_prev - alpha_prev).abs() < 5e-6,
                "ᾱ_prev({t}): {got_prev}"
            );
            assert!((got_sigma - sigma).abs() < tol, "σ_{t}: {got_sigma}");
        }
        Ok(())
    }

    #[test]
    fn log_prob_is_highest_at_the_mean_and_matches_the_closed_form() -> Result<()> {
        let ddim = sd15_ddim()?;
        let dev = Device::Cpu;
        let sample = Tensor::ones((2, 1, 2, 2), DType::F32, &dev)?;
        let eps = (Tensor::ones((2, 1, 2, 2), DType::F32, &dev)? * 0.1)?;
        let tr = ddim.transition(&eps, &[751, 1], &sample)?;
        let at_mean: Vec<f32> = tr.log_prob(&tr.mean)?.to_vec1()?;
        let sigma: Vec<f32> = tr.std.to_vec1()?;
        for (lp, s) in at_mean.iter().zip(&sigma) {
            // at x = μ: −log σ − log √(2π)
            let expected = -(*s as f64).ln() - (2.0 * std::f64::consts::PI).sqrt().ln();
            assert!((*lp as f64 - expected).abs() < 1e-5);
        }
        let shifted = (&tr.mean + 0.01)?;
        let lower: Vec<f32> = tr.log_prob(&shifted)?.to_vec1()?;
        assert!(lower.iter().zip(&at_mean).all(|(l, m)| l < m));
        Ok(())
    }

    #[test]
    fn eta_zero_is_deterministic_and_eta_one_needs_noise() -> Result<()> {
        let dev = Device::Cpu;
        let schedule = NoiseSchedule::new(SchedulerConfig::sd15())?;
        let x = Tensor::ones((1, 1, 2, 2), DType::F32, &dev)?;
        let deterministic = Ddim::new(schedule.clone(), 20, 0.0)?;
        let (prev, tr) = deterministic.step(&x, &[501], &x, None)?;
        assert_eq!(tr.std.to_vec1::<f32>()?, vec![0.0]);
        assert_eq!(
            prev.flatten_all()?.to_vec1::<f32>()?,
            tr.mean.flatten_all()?.to_vec1::<f32>()?
        );
        assert!(sd15_ddim()?.step(&x, &[501], &x, None).is_err());
        Ok(())
    }

    #[test]
    fn guidance_interpolates_and_extrapolates() -> Result<()> {
        let dev = Device::Cpu;
        let u = Tensor::new(&[1.0f32, 2.0], &dev)?;
        let c = Tensor::new(&[2.0f32, 0.0], &dev)?;
        let g = classifier_free_guidance(&u, &c, 5.0)?.to_vec1::<f32>()?;
        assert_eq!(g, vec![6.0, -8.0]);
        Ok(())
    }
}
