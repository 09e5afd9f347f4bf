//! Activations with recorded backward passes and the exact (erf) GELU.
//!
//! HF/diffusers "gelu" is the erf form; candle's `Tensor::gelu` is the tanh approximation, so
//! the two differ by up to ~1e-3. QuickGELU is OpenAI CLIP's `x·σ(1.702x)`.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use serde::Deserialize;

use candle_core::cpu::erf::erf_f32;

use crate::cpu_slice::{TensorSlice, grad_tensor, storage_slice};

/// `x·Φ(x)` with the exact normal CDF (PyTorch `gelu`, approximate="none"). On f32 CPU tensors
/// one pass over the elements each way on the calling pool, with the bits of candle's
/// `gelu_erf` and of the seven ops its backward records.
pub fn gelu_exact(xs: &Tensor) -> Result<Tensor> {
    if crate::fast_path::applies(&[xs]) {
        return xs.contiguous()?.apply_op1(GeluErf);
    }
    xs.gelu_erf()
}

/// [`gelu_exact`]'s kernel.
#[derive(Debug, Clone, Copy)]
struct GeluErf;

/// `gelu_erf` as candle computes it in f32.
fn gelu_erf(v: f32) -> f32 {
    (erf_f32(v * std::f32::consts::FRAC_1_SQRT_2) + 1.) * 0.5 * v
}

/// Its derivative as candle's backward composes it, op by op: affine maps (`· m + 0`, `· 1 + a`)
/// where it multiplies or adds an f64 constant, the constants rounded to f32 as candle does.
fn gelu_erf_derivative(v: f32) -> f32 {
    let neg_half_square = -(v * v) * 0.5 + 0.0;
    let scaled_exp_arg = (neg_half_square.exp() * 0.398942f64 as f32 + 0.0) * v;
    let arg_scaled_sqrt = v * (1.0 / 2f64.sqrt()) as f32 + 0.0;
    let erf_scaled_sqrt = erf_f32(arg_scaled_sqrt) * 0.5 + 0.0;
    (scaled_exp_arg * 1.0 + 0.5) + erf_scaled_sqrt
}

/// `f` over `xs` on the calling pool, into a fresh vector.
fn map_par(xs: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    let mut ys = Vec::with_capacity(xs.len());
    xs.par_iter()
        .with_min_len(CHUNK)
        .map(|&x| f(x))
        .collect_into_vec(&mut ys);
    ys
}

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "gelu-erf"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let xs = storage_slice(storage, layout, "gelu: input")?;
        Ok((
            CpuStorage::F32(map_par(xs, gelu_erf)),
            layout.shape().clone(),
        ))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        let (xt, gt) = (
            TensorSlice::new(arg, "gelu: input"),
            TensorSlice::new(&grad, "gelu: output gradient"),
        );
        let (xs, gs) = (xt.get()?, gt.get()?);
        let mut dx = Vec::with_capacity(xs.len());
        xs.par_iter()
            .zip(gs)
            .with_min_len(CHUNK)
            .map(|(&x, &g)| g * gelu_erf_derivative(x))
            .collect_into_vec(&mut dx);
        grad_tensor(Some(dx), arg)
    }
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
        // As candle computes `x * 1.702` (an affine map), its sigmoid, then the product.
        let ys = map_par(xs, |x| x * ((-(x * 1.702f32 + 0.0)).exp() + 1.0).recip());
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
    use crate::test_support::bits;
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
        let composed = (&xs * candle_nn::ops::sigmoid(&(&xs * 1.702)?)?)?;
        assert_eq!(bits(&quick_gelu(&xs)?)?, bits(&composed)?);
        // a strided view goes through `contiguous` first
        let t = xs.t()?;
        let composed_t = (&t * candle_nn::ops::sigmoid(&(&t * 1.702)?)?)?;
        assert_eq!(bits(&quick_gelu(&t)?)?, bits(&composed_t)?);
        Ok(())
    }

    #[test]
    fn the_fused_gelu_has_the_bits_of_candles_gelu_erf_and_its_backward() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = crate::SeededRng::new(6);
        let x =
            Var::from_tensor(&rng.normal((5, 30_000), 0.0, 3.0, candle_core::DType::F32, &dev)?)?;
        let probe = rng.normal((5, 30_000), 0.0, 1.0, candle_core::DType::F32, &dev)?;
        let fused = gelu_exact(&x)?;
        let composed = x.gelu_erf()?;
        assert_eq!(bits(&fused)?, bits(&composed)?);
        let gf = (fused * &probe)?.sum_all()?.backward()?;
        let gc = (composed * &probe)?.sum_all()?.backward()?;
        let (Some(a), Some(b)) = (gf.get(&x), gc.get(&x)) else {
            panic!("gradient missing");
        };
        assert_eq!(bits(a)?, bits(b)?);
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
