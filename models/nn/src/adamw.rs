//! AdamW with state that can be saved and restored exactly.
//!
//! `candle_nn::AdamW` keeps its moment buffers private, so a resumed run cannot continue where
//! it stopped. This one follows `torch.optim.AdamW` (decoupled weight decay, per-parameter step
//! counts, no amsgrad) and saves its moments and step counts as safetensors keyed by the
//! parameter's name:
//! `<name>.exp_avg`, `<name>.exp_avg_sq`, `<name>.step` (an f64 scalar, as torch stores it).

use std::collections::HashMap;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Result, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::NnError;

/// AdamW hyper-parameters; `Default` is PyTorch's (lr 1e-3, betas (0.9, 0.999), eps 1e-8,
/// weight decay 1e-2).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    /// Learning rate.
    pub lr: f64,
    /// Decay of the first moment.
    pub beta1: f64,
    /// Decay of the second moment.
    pub beta2: f64,
    /// Added to the denominator.
    pub eps: f64,
    /// Decoupled weight decay (multiplies the parameter by `1 − lr·weight_decay`).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-2,
        }
    }
}

struct ParamState {
    name: String,
    var: Var,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: u64,
}

/// `torch.optim.AdamW` over named `Var`s, with exact save/load of its state.
pub struct AdamW {
    config: AdamWConfig,
    params: Vec<ParamState>,
}

impl AdamW {
    /// An optimiser over `params` (name, var), with zero moments.
    pub fn new(params: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self> {
        let params = params
            .into_iter()
            .map(|(name, var)| {
                let zeros = var.zeros_like()?;
                Ok(ParamState {
                    name,
                    exp_avg: zeros.clone(),
                    exp_avg_sq: zeros,
                    var,
                    step: 0,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { config, params })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// The parameters it updates, in order.
    pub fn vars(&self) -> impl Iterator<Item = &Var> {
        self.params.iter().map(|p| &p.var)
    }

    /// Changes the learning rate (for schedules).
    pub fn set_learning_rate(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    /// One update of every parameter that has a gradient in `grads`; parameters without one are
    /// left untouched, as torch skips parameters whose `.grad` is None.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        let AdamWConfig {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.config;
        for p in self.params.iter_mut() {
            let Some(grad) = grads.get(&p.var) else {
                continue;
            };
            p.step += 1;
            let theta = p.var.as_tensor().detach();
            // θ ← θ·(1 − lr·λ)   (decoupled weight decay)
            let theta = (theta * (1.0 - lr * weight_decay))?;
            // m ← β1·m + (1 − β1)·g ;  v ← β2·v + (1 − β2)·g²
            p.exp_avg = ((&p.exp_avg * beta1)? + (grad * (1.0 - beta1))?)?;
            p.exp_avg_sq = ((&p.exp_avg_sq * beta2)? + (grad.sqr()? * (1.0 - beta2))?)?;
            // θ ← θ − lr/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + ε)
            let bias1 = 1.0 - beta1.powi(p.step as i32);
            let bias2 = 1.0 - beta2.powi(p.step as i32);
            let denom = ((p.exp_avg_sq.sqrt()? / bias2.sqrt())? + eps)?;
            let update = ((&p.exp_avg / denom)? * (lr / bias1))?;
            p.var.set(&(theta - update)?)?;
        }
        Ok(())
    }

    /// [`Self::step`] after clipping `grads` to a global norm of `max_norm`, where one is
    /// given ([`crate::clip_grad_norm`]).
    pub fn step_clipped(&mut self, mut grads: GradStore, max_norm: Option<f64>) -> Result<()> {
        if let Some(max) = max_norm {
            crate::clip_grad_norm(&mut grads, self.vars(), max)?;
        }
        self.step(&grads)
    }

    /// Writes the moments and step counts to a safetensors file.
    pub fn save(&self, path: &Path) -> std::result::Result<(), NnError> {
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for p in &self.params {
            tensors.insert(format!("{}.exp_avg", p.name), p.exp_avg.clone());
            tensors.insert(format!("{}.exp_avg_sq", p.name), p.exp_avg_sq.clone());
            let step = Tensor::new(p.step as f64, &Device::Cpu)?;
            tensors.insert(format!("{}.step", p.name), step);
        }
        candle_core::safetensors::save(&tensors, path).map_err(|source| NnError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Restores moments and step counts saved by [`AdamW::save`] for the same parameter names.
    pub fn load(&mut self, path: &Path) -> std::result::Result<(), NnError> {
        let tensors =
            candle_core::safetensors::load(path, &Device::Cpu).map_err(|source| NnError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        let fetch = |key: String, expected: &[usize]| -> std::result::Result<Tensor, NnError> {
            let t = tensors.get(&key).ok_or_else(|| NnError::MissingTensor {
                path: path.to_path_buf(),
                key: key.clone(),
                expected: expected.to_vec(),
            })?;
            if t.dims() != expected {
                return Err(NnError::ShapeMismatch {
                    path: path.to_path_buf(),
                    key,
                    expected: expected.to_vec(),
                    got: t.dims().to_vec(),
                });
            }
            Ok(t.clone())
        };
        for p in self.params.iter_mut() {
            let dims = p.var.dims().to_vec();
            let (device, dtype) = (p.var.device().clone(), p.var.dtype());
            p.exp_avg = fetch(format!("{}.exp_avg", p.name), &dims)?
                .to_device(&device)?
                .to_dtype(dtype)?;
            p.exp_avg_sq = fetch(format!("{}.exp_avg_sq", p.name), &dims)?
                .to_device(&device)?
                .to_dtype(dtype)?;
            let step = fetch(format!("{}.step", p.name), &[])?.to_dtype(DType::F64)?;
            p.step = step.to_scalar::<f64>()? as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quadratic_step(opt: &mut AdamW, w: &Var) -> Result<()> {
        // loss = Σ (w − 3)², gradient 2(w − 3).
        let loss = (w.as_tensor() - 3.0)?.sqr()?.sum_all()?;
        opt.step(&loss.backward()?)
    }

    #[test]
    fn first_steps_match_torch() -> Result<()> {
        // torch: w = tensor([1., -2.]); AdamW([w], lr=0.1, weight_decay=0.01);
        // two steps of loss ((w - 3)**2).sum() give w = [1.1977365, -1.7961611].
        let w = Var::new(&[1.0f32, -2.0], &Device::Cpu)?;
        let config = AdamWConfig {
            lr: 0.1,
            ..AdamWConfig::default()
        };
        let mut opt = AdamW::new(vec![("w".into(), w.clone())], config)?;
        quadratic_step(&mut opt, &w)?;
        quadratic_step(&mut opt, &w)?;
        let got = w.as_tensor().to_vec1::<f32>()?;
        let expected = [1.197_736_5f32, -1.796_161];
        for (a, b) in got.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{got:?} vs {expected:?}");
        }
        Ok(())
    }

    #[test]
    fn save_and_load_resume_exactly() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("spo-nn-adamw-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("opt.safetensors");
        let config = AdamWConfig::default();

        let w = Var::new(&[0.5f32, 1.5, -0.25], &Device::Cpu)?;
        let mut opt = AdamW::new(vec![("w".into(), w.clone())], config)?;
        for _ in 0..3 {
            quadratic_step(&mut opt, &w)?;
        }
        opt.save(&path)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let w_saved = w.as_tensor().copy()?;
        for _ in 0..2 {
            quadratic_step(&mut opt, &w)?;
        }

        let w2 = Var::from_tensor(&w_saved)?;
        let mut resumed = AdamW::new(vec![("w".into(), w2.clone())], config)?;
        resumed
            .load(&path)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        for _ in 0..2 {
            quadratic_step(&mut resumed, &w2)?;
        }
        assert_eq!(
            w.as_tensor().to_vec1::<f32>()?,
            w2.as_tensor().to_vec1::<f32>()?
        );

        let other = Var::new(&[0.0f32, 0.0], &Device::Cpu)?;
        let mut mismatched = AdamW::new(vec![("w".into(), other)], config)?;
        let err = mismatched
            .load(&path)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("w.exp_avg") && err.contains("[2]"), "{err}");
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
