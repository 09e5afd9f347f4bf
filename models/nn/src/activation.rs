//! Activations with recorded backward passes and the exact (erf) GELU.
//!
//! HF/diffusers "gelu" is the erf form; candle's `Tensor::gelu` is the tanh approximation, so
//! the two differ by up to ~1e-3. QuickGELU is OpenAI CLIP's `x·σ(1.702x)`.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use serde::Deserialize;

use crate::cpu_slice::storage_slice;

/// `x·Φ(x)` with the exact normal CDF (PyTorch `gelu`, approximate="none").
pub fn gelu_exact(xs: &Tensor) -> Result<Tensor> {
    xs.gelu_erf()
}

/// `x·σ(1.702·x)`, the activation of OpenAI's CLIP. Without a gradient to record (scoring,
/// judging) on f32 CPU tensors it is one pass over the elements on the calling pool, with the
/// bits of the three composed ops used otherwise.
pub fn quick_gelu(xs: &Tensor) -> Result<Tensor> {
    if !xs.track_op() && crate::fast_path::applies(&[xs]) {
        return xs.contiguous()?.apply_op1_no_bwd(&QuickGelu);
    }
    xs * candle_nn::ops::sigmoid(&(xs * 1.702)?)?
}

/// [`quick_gelu`]'s forward-only kernel.
struct QuickGelu;

/// Elements per parallel chunk.
const CHUNK: usize = 1 << 14;

impl CustomOp1 for QuickGelu {
    fn name(&self) -> &'static str {
        "quick-gelu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let xs = storage_slice(storage, layout, "quick-gelu: input")?;
        let mut ys = Vec::with_capacity(xs.len());
        xs.par_iter()
            .with_min_len(CHUNK)
            .map(|&x| {
                // As candle computes `x * 1.702` (an affine map), its sigmoid, then the product.
                let t = x * 1.702f32 + 0.0;
                x * ((-t).exp() + 1.0).recip()
            })
            .collect_into_vec(&mut ys);
        Ok((CpuStorage::F32(ys), layout.shape().clone()))
    }
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
    fn the_fused_quick_gelu_has_the_bits_of_the_composed_ops() -> Result<()> {
        let dev = Device::Cpu;
        let xs = crate::SeededRng::new(5).normal(
            (3, 40_000),
            0.0,
            4.0,
            candle_core::DType::F32,
            &dev,
        )?;
        let fused = quick_gelu(&xs)?.flatten_all()?.to_vec1::<f32>()?;
        let composed = (&xs * candle_nn::ops::sigmoid(&(&xs * 1.702)?)?)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&fused), bits(&composed));
        // a strided view goes through `contiguous` first
        let t = xs.t()?;
        let composed_t = (&t * candle_nn::ops::sigmoid(&(&t * 1.702)?)?)?;
        assert_eq!(
            bits(&quick_gelu(&t)?.flatten_all()?.to_vec1::<f32>()?),
            bits(&composed_t.flatten_all()?.to_vec1::<f32>()?)
        );
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
