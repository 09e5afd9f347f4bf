//! Timestep embeddings of diffusers (`src/diffusers/models/embeddings.py`):
//! `get_timestep_embedding` (sinusoidal) and `TimestepEmbedding` (linear–act–linear).

use candle_core::{DType, Module, Tensor};
use candle_nn::{Linear, VarBuilder};
use spo_nn::{Activation, linear::linear};

use crate::error::Result;

/// Sinusoidal embedding of per-sample timesteps `(b,)` → `(b, dim)` in f32:
/// `exponent_i = −ln(10000)·i/(half − shift)`, `emb = [sin(t·e^{exponent}), cos(…)]`,
/// swapped to `[cos, sin]` when `flip_sin_to_cos`.
pub fn timestep_embedding(
    timesteps: &Tensor,
    dim: usize,
    flip_sin_to_cos: bool,
    shift: f64,
) -> Result<Tensor> {
    let half = dim / 2;
    let dev = timesteps.device();
    let freqs: Vec<f32> = (0..half)
        .map(|i| (-(10000f64.ln()) * i as f64 / (half as f64 - shift)).exp() as f32)
        .collect();
    let freqs = Tensor::from_vec(freqs, (1, half), dev)?;
    // (b, half)
    let args = timesteps
        .to_dtype(DType::F32)?
        .unsqueeze(1)?
        .broadcast_mul(&freqs)?;
    let (sin, cos) = (args.sin()?, args.cos()?);
    let emb = if flip_sin_to_cos {
        Tensor::cat(&[cos, sin], 1)?
    } else {
        Tensor::cat(&[sin, cos], 1)?
    };
    if dim % 2 == 1 {
        return Ok(emb.pad_with_zeros(1, 0, 1)?);
    }
    Ok(emb)
}

/// `TimestepEmbedding`: `linear_2(act(linear_1(x)))`.
#[derive(Debug, Clone)]
pub struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
    act: Activation,
}

impl TimestepEmbedding {
    /// `in_dim → out_dim → out_dim`.
    pub fn new(in_dim: usize, out_dim: usize, act: Activation, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            linear_1: linear(in_dim, out_dim, vb.pp("linear_1"))?,
            linear_2: linear(out_dim, out_dim, vb.pp("linear_2"))?,
            act,
        })
    }

    /// `(b, in_dim) → (b, out_dim)`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let hs = self.act.apply(&self.linear_1.forward(xs)?)?;
        Ok(self.linear_2.forward(&hs)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn zero_timestep_gives_cos_ones_then_sin_zeros() -> Result<()> {
        let t = Tensor::new(&[0u32], &Device::Cpu)?;
        let emb = timestep_embedding(&t, 4, true, 0.0)?.to_vec2::<f32>()?;
        assert_eq!(emb, vec![vec![1.0, 1.0, 0.0, 0.0]]);
        // t = 1, dim 4, shift 0: freqs = [1, 1e-2]; flipped → [cos 1, cos .01, sin 1, sin .01]
        let t = Tensor::new(&[1u32], &Device::Cpu)?;
        let emb = timestep_embedding(&t, 4, true, 0.0)?.to_vec2::<f32>()?;
        let expected = [1f32.cos(), 0.01f32.cos(), 1f32.sin(), 0.01f32.sin()];
        for (a, b) in emb[0].iter().zip(expected) {
            assert!((a - b).abs() < 1e-6);
        }
        Ok(())
    }
}
