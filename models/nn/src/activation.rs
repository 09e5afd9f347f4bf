//! Activations with recorded backward passes and the exact (erf) GELU.
//!
//! HF/diffusers "gelu" is the erf form; candle's `Tensor::gelu` is the tanh approximation, so
//! the two differ by up to ~1e-3. QuickGELU is OpenAI CLIP's `x·σ(1.702x)`.

use candle_core::{Result, Tensor};
use serde::Deserialize;

/// `x·Φ(x)` with the exact normal CDF (PyTorch `gelu`, approximate="none").
pub fn gelu_exact(xs: &Tensor) -> Result<Tensor> {
    xs.gelu_erf()
}

/// `x·σ(1.702·x)`, the activation of OpenAI's CLIP.
pub fn quick_gelu(xs: &Tensor) -> Result<Tensor> {
    xs * candle_nn::ops::sigmoid(&(xs * 1.702)?)?
}

/// An activation named as in HF / diffusers config files (`hidden_act`, `act_fn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// Exact (erf) GELU, config name `gelu`.
    Gelu,
    /// `x·σ(1.702x)`, config name `quick_gelu`.
    QuickGelu,
    /// `x·σ(x)`, config name `silu` (diffusers' default `act_fn`).
    Silu,
}

impl Activation {
    /// Applies the activation.
    pub fn apply(self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Self::Gelu => gelu_exact(xs),
            Self::QuickGelu => quick_gelu(xs),
            Self::Silu => xs.silu(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn known_values() -> Result<()> {
        let xs = Tensor::new(&[-1.0f32, 0.0, 2.0], &Device::Cpu)?;
        // torch.nn.functional.gelu(torch.tensor([-1., 0., 2.])) = [-0.158655, 0, 1.954500]
        let g = gelu_exact(&xs)?.to_vec1::<f32>()?;
        for (a, b) in g.iter().zip([-0.158_655_26f32, 0.0, 1.954_499_8]) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
        // x * sigmoid(1.702 x) at -1, 0, 2 = [-0.154204, 0, 1.935659]
        let q = quick_gelu(&xs)?.to_vec1::<f32>()?;
        for (a, b) in q.iter().zip([-0.154_204_23f32, 0.0, 1.935_658_6]) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        Ok(())
    }

    #[test]
    fn every_activation_has_a_gradient() -> Result<()> {
        let xs = Var::new(&[-1.0f32, 0.5, 2.0], &Device::Cpu)?;
        for act in [Activation::Gelu, Activation::QuickGelu, Activation::Silu] {
            let grads = act.apply(xs.as_tensor())?.sum_all()?.backward()?;
            let g = grads
                .get(&xs)
                .expect("gradient recorded")
                .abs()?
                .sum_all()?;
            assert!(g.to_scalar::<f32>()? > 0.0, "{act:?}");
        }
        Ok(())
    }

    #[test]
    fn config_names_deserialise() {
        let acts: Vec<Activation> = serde_json::from_str(r#"["gelu","quick_gelu","silu"]"#)
            .expect("valid activation names");
        assert_eq!(
            acts,
            vec![Activation::Gelu, Activation::QuickGelu, Activation::Silu]
        );
    }
}
