//! GroupNorm (and GroupNorm followed by SiLU) whose backward pass is recorded.
//!
//! The statistics are computed in f32 over each group of `channels / groups` channels and all
//! spatial positions, as `torch.nn.GroupNorm`; `weight` and `bias` are per channel.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

/// `torch.nn.GroupNorm(groups, channels, eps)` with affine parameters.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    /// Loads or creates `weight` (init 1) and `bias` (init 0) of shape `(channels,)`.
    pub fn new(groups: usize, channels: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        if groups == 0 || !channels.is_multiple_of(groups) {
            candle_core::bail!(
                "group norm `{}`: {groups} groups do not divide {channels} channels",
                vb.prefix()
            )
        }
        let weight = vb.get_with_hints(channels, "weight", candle_nn::init::ONE)?;
        let bias = vb.get_with_hints(channels, "bias", candle_nn::init::ZERO)?;
        Ok(Self {
            weight,
            bias,
            groups,
            eps,
        })
    }

    /// `silu(group_norm(xs))`, the pre-activation of every diffusers ResNet block.
    pub fn forward_silu(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward(xs)?.silu()
    }
}

impl Module for GroupNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let dims = xs.dims().to_vec();
        let (b, c) = (dims[0], dims[1]);
        let dtype = xs.dtype();
        // (b, groups, c/groups · spatial)
        let grouped = xs.to_dtype(DType::F32)?.reshape((b, self.groups, ()))?;
        let mean = grouped.mean_keepdim(2)?;
        let centred = grouped.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(2)?;
        let normed = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        let mut affine_shape = vec![1usize; dims.len()];
        affine_shape[1] = c;
        normed
            .reshape(dims.as_slice())?
            .to_dtype(dtype)?
            .broadcast_mul(&self.weight.reshape(affine_shape.as_slice())?)?
            .broadcast_add(&self.bias.reshape(affine_shape.as_slice())?)
    }
}
