//! GroupNorm (and GroupNorm followed by SiLU) whose backward pass is recorded.
//!
//! The statistics are computed over each group of `channels / groups` channels and all spatial
//! positions, as `torch.nn.GroupNorm`; `weight` and `bias` are per channel. On the CPU in f32
//! the fused kernel of [`crate::group_norm_fused`] runs (one op forward, one backward); other
//! devices and dtypes use the elementwise form, which [`GroupNorm::forward_elementwise`] also
//! exposes for tests.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::group_norm_fused::GroupNormAct;

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
        if crate::fast_path::applies(&[xs]) {
            return self.fused(xs, true);
        }
        self.forward_elementwise(xs)?.silu()
    }

    fn fused(&self, xs: &Tensor, silu: bool) -> Result<Tensor> {
        let (op, weight, bias) = self.fused_parts(silu);
        xs.contiguous()?.apply_op3(weight, bias, op)
    }

    /// The fused kernel's op and its `(weight, bias)` operands.
    pub(crate) fn fused_parts(&self, silu: bool) -> (GroupNormAct, &Tensor, &Tensor) {
        let op = GroupNormAct {
            groups: self.groups,
            eps: self.eps,
            silu,
        };
        (op, &self.weight, &self.bias)
    }

    /// The reference form from elementwise tensor ops (any device and dtype).
    pub fn forward_elementwise(&self, xs: &Tensor) -> Result<Tensor> {
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

impl Module for GroupNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if crate::fast_path::applies(&[xs]) {
            return self.fused(xs, false);
        }
        self.forward_elementwise(xs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SeededRng;
    use crate::seeded_init::seeded_var_builder;
    use candle_core::{Device, Var};
    use candle_nn::VarMap;

    /// The fused kernel against the elementwise form: values and the gradients of x, γ, β.
    #[test]
    fn fused_matches_elementwise_values_and_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = SeededRng::new(6);
        let varmap = VarMap::new();
        let vb = seeded_var_builder(&varmap, 1, DType::F32, &dev);
        let gn = GroupNorm::new(4, 8, 1e-5, vb)?;
        // move γ, β away from 1, 0
        for (_, var) in crate::seeded_init::named_vars(&varmap)? {
            var.set(&(var.as_tensor() + rng.normal(8, 0.0, 0.5, DType::F32, &dev)?)?)?;
        }
        let x = Var::from_tensor(&(rng.normal((3, 8, 5, 4), 0.5, 2.0, DType::F32, &dev)?))?;
        let probe = rng.normal((3, 8, 5, 4), 0.0, 1.0, DType::F32, &dev)?;
        let vars = crate::seeded_init::named_vars(&varmap)?;
        for silu in [false, true] {
            let (fast, plain) = if silu {
                (
                    gn.forward_silu(x.as_tensor())?,
                    gn.forward_elementwise(x.as_tensor())?.silu()?,
                )
            } else {
                (
                    gn.forward(x.as_tensor())?,
                    gn.forward_elementwise(x.as_tensor())?,
                )
            };
            let diff = |a: &Tensor, b: &Tensor| -> Result<f32> {
                (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
            };
            assert!(diff(&fast, &plain)? < 1e-5, "values, silu {silu}");
            let g_fast = (fast * &probe)?.sum_all()?.backward()?;
            let g_plain = (plain * &probe)?.sum_all()?.backward()?;
            let mut all: Vec<(String, &Var)> = vars.iter().map(|(n, v)| (n.clone(), v)).collect();
            all.push(("x".into(), &x));
            for (name, var) in all {
                let (Some(a), Some(b)) = (g_fast.get(var), g_plain.get(var)) else {
                    panic!("{name}: gradient missing, silu {silu}");
                };
                assert!(
                    diff(a, b)? < 1e-4,
                    "{name} gradient, silu {silu}: {}",
                    diff(a, b)?
                );
            }
        }
        Ok(())
    }
}
