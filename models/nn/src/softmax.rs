//! Softmax over the last dimension as one CPU kernel with a recorded backward.
//!
//! `candle_nn::ops::softmax` composes five ops (max, sub, exp, sum, div) and records all of them
//! for backward; `softmax_last_dim` is fused but has no backward at all. [`SoftmaxLastDim`]
//! computes `y = exp(x − max)/Σ exp(x − max)` per row in one pass, and its backward is
//! `dx = y·(dy − Σ dy·y)` (two tensor ops). f32 on the CPU; [`softmax_last_dim`] falls back
//! to `candle_nn::ops::softmax` elsewhere.

use crate::cpu_slice::storage_slice;
use crate::vmath::softmax_row;
use candle_core::{CpuStorage, CustomOp1, D, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Row softmax over the last dimension (f32, CPU) with backward.
#[derive(Debug, Clone, Copy)]
pub struct SoftmaxLastDim;

impl CustomOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "softmax-last-dim-bwd"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = storage_slice(storage, layout, "softmax: input")?;
        let n = layout.dims().last().copied().unwrap_or(1).max(1);
        let mut out = src.to_vec();
        out.par_chunks_mut(n).for_each(softmax_row);
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        // dx = y·(dy − Σ_j dy_j·y_j)
        let dot = (grad_res * res)?.sum_keepdim(D::Minus1)?;
        Ok(Some((res * grad_res.broadcast_sub(&dot)?)?))
    }
}

/// Softmax over the last dimension, differentiable on every device.
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    if crate::fast_path::applies(&[xs]) {
        return xs.contiguous()?.apply_op1(SoftmaxLastDim);
    }
    candle_nn::ops::softmax(xs, D::Minus1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SeededRng;
    use candle_core::{DType, Device, Var};

    #[test]
    fn matches_candle_softmax_values_and_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = SeededRng::new(8);
        let x = Var::from_tensor(&rng.normal((3, 4, 7), 0.0, 3.0, DType::F32, &dev)?)?;
        let fast = softmax_last_dim(x.as_tensor())?;
        let plain = candle_nn::ops::softmax(x.as_tensor(), D::Minus1)?;
        let diff = |a: &Tensor, b: &Tensor| -> Result<f32> {
            (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
        };
        assert!(diff(&fast, &plain)? < 1e-6);
        let probe = rng.normal((3, 4, 7), 0.0, 1.0, DType::F32, &dev)?;
        let g_fast = (fast * &probe)?.sum_all()?.backward()?;
        let g_plain = (plain * &probe)?.sum_all()?.backward()?;
        let (Some(a), Some(b)) = (g_fast.get(&x), g_plain.get(&x)) else {
            panic!("missing gradient");
        };
        assert!(diff(a, b)? < 1e-6);
        Ok(())
    }
}
