//! A LayerNorm whose backward pass is recorded.
//!
//! `candle_nn::LayerNorm` switches to the fused `ops::layer_norm` kernel, which records no
//! backward op, whenever its input is contiguous; gradients then silently stop there
//! (huggingface/candle #2168). This version is written with elementwise tensor ops, so every
//! input and both affine parameters receive gradients. The statistics are computed in f32.

use candle_core::{D, DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

/// `y = (x − mean) / sqrt(var + eps) · weight + bias` over the last dimension.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Option<Tensor>,
    eps: f64,
}

impl LayerNorm {
    /// A LayerNorm from explicit parameters (`bias` optional).
    pub fn from_parts(weight: Tensor, bias: Option<Tensor>, eps: f64) -> Self {
        Self { weight, bias, eps }
    }

    /// Loads or creates `weight` (init 1) and `bias` (init 0), both of shape `(dim,)`.
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(dim, "weight", candle_nn::init::ONE)?;
        let bias = vb.get_with_hints(dim, "bias", candle_nn::init::ZERO)?;
        Ok(Self::from_parts(weight, Some(bias), eps))
    }

    /// A LayerNorm without a bias (`weight` only).
    pub fn new_no_bias(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(dim, "weight", candle_nn::init::ONE)?;
        Ok(Self::from_parts(weight, None, eps))
    }
}

impl Module for LayerNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let dtype = xs.dtype();
        let xs = xs.to_dtype(DType::F32)?;
        let mean = xs.mean_keepdim(D::Minus1)?;
        let centred = xs.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        let ys = normed.to_dtype(dtype)?.broadcast_mul(&self.weight)?;
        match &self.bias {
            Some(bias) => ys.broadcast_add(bias),
            None => Ok(ys),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn matches_candle_layer_norm_and_propagates_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let xs = Var::from_tensor(&Tensor::arange(0f32, 24., &dev)?.reshape((2, 3, 4))?.sqr()?)?;
        let w = Var::from_tensor(&Tensor::new(&[1.0f32, 2.0, -1.0, 0.5], &dev)?)?;
        let b = Var::from_tensor(&Tensor::new(&[0.1f32, 0.2, 0.3, 0.4], &dev)?)?;
        let ln = LayerNorm::from_parts(w.as_tensor().clone(), Some(b.as_tensor().clone()), 1e-5);
        let ours = ln.forward(xs.as_tensor())?;
        let reference =
            candle_nn::LayerNorm::new(w.as_tensor().clone(), b.as_tensor().clone(), 1e-5)
                .forward(xs.as_tensor())?;
        let diff = (ours.clone() - reference)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-5, "max diff {diff}");
        let grads = (ours.sqr()? * Tensor::arange(0f32, 24., &dev)?.reshape((2, 3, 4))?)?
            .sum_all()?
            .backward()?;
        for var in [&xs, &w, &b] {
            let g = grads.get(var).expect("gradient recorded");
            assert!(g.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0);
        }
        Ok(())
    }
}
