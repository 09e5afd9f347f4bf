//! A LayerNorm whose backward pass is recorded.
//!
//! `candle_nn::LayerNorm` switches to the fused `ops::layer_norm` kernel, which records no
//! backward op, whenever its input is contiguous; gradients then silently stop there
//! (huggingface/candle #2168). Here every input and both affine parameters receive gradients:
//! on the CPU in f32 (with a bias) through the fused kernel of [`crate::layer_norm_fused`],
//! elsewhere through elementwise tensor ops with f32 statistics ([`LayerNorm::forward_elementwise`]).

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

impl LayerNorm {
    /// The reference form from elementwise tensor ops (any device and dtype).
    pub fn forward_elementwise(&self, xs: &Tensor) -> Result<Tensor> {
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

impl Module for LayerNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match &self.bias {
            Some(bias) if crate::fast_path::applies(&[xs]) => {
                let op = crate::layer_norm_fused::LayerNormAffine { eps: self.eps };
                xs.contiguous()?.apply_op3(&self.weight, bias, op)
            }
            _ => self.forward_elementwise(xs),
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

    #[test]
    fn fused_matches_elementwise_values_and_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = crate::rng::SeededRng::new(12);
        let xs = Var::from_tensor(&rng.normal((3, 70, 6), 1.0, 2.0, DType::F32, &dev)?)?;
        let w = Var::from_tensor(&rng.normal(6, 1.0, 0.5, DType::F32, &dev)?)?;
        let b = Var::from_tensor(&rng.normal(6, 0.0, 0.5, DType::F32, &dev)?)?;
        let ln = LayerNorm::from_parts(w.as_tensor().clone(), Some(b.as_tensor().clone()), 1e-5);
        let probe = rng.normal((3, 70, 6), 0.0, 1.0, DType::F32, &dev)?;
        let fast = ln.forward(xs.as_tensor())?;
        let plain = ln.forward_elementwise(xs.as_tensor())?;
        let diff = |a: &Tensor, b: &Tensor| -> Result<f32> {
            (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
        };
        assert!(diff(&fast, &plain)? < 1e-5);
        let g_fast = (fast * &probe)?.sum_all()?.backward()?;
        let g_plain = (plain * &probe)?.sum_all()?.backward()?;
        for (name, var) in [("x", &xs), ("weight", &w), ("bias", &b)] {
            let (Some(a), Some(c)) = (g_fast.get(var), g_plain.get(var)) else {
                panic!("{name}: gradient missing");
            };
            assert!(diff(a, c)? < 1e-4, "{name}: {}", diff(a, c)?);
        }
        Ok(())
    }
}
