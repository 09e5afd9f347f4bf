//! Linear layers initialised as PyTorch's `nn.Linear`.
//!
//! `candle_nn::linear` draws weights from a Kaiming *normal*; PyTorch draws both weight and bias
//! from U(−1/√fan_in, 1/√fan_in). These helpers use PyTorch's rule so that freshly built tiny
//! models have the same scale as their diffusers/transformers counterparts. Weights loaded from a
//! checkpoint ignore the hint. The layer itself is `candle_nn::Linear` (a matmul with backward).
//!
//! **candle 0.11.1 trap:** `candle_nn::Linear::forward` (and `Tensor::matmul` against a
//! `broadcast_left` weight) silently returns wrong values for a 3-D input that is a transposed
//! view with batch > 1, e.g. `xs.reshape((b, c, h·w))?.transpose(1, 2)?`. Pass such inputs
//! through `.contiguous()?` first (a no-op for contiguous tensors); `broadcast_matmul` is not
//! affected.

use std::sync::{Arc, OnceLock};

use crate::cpu_slice::TensorSlice;
use crate::gemm::transpose;
use crate::linear_fused::{BLOCK, LinearOp, forward_with, reads_copy, sizes};
use crate::linear_geglu::LinearGeglu;
use candle_core::{Result, Tensor};
use candle_nn::{Init, Linear, VarBuilder};

fn torch_bound(in_dim: usize) -> Init {
    let bound = 1.0 / (in_dim as f64).sqrt();
    Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// `x·Wᵀ (+ b)` for `x: (rows, in)`, `W: (out, in)`: the fused op of [`crate::linear_fused`]
/// for f32 on the CPU, candle's `matmul` and broadcast add elsewhere.
pub fn linear_2d(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let fused = crate::fast_path::applies(&[x, weight])
        && bias.is_none_or(|b| crate::fast_path::applies(&[b]));
    match (fused, bias) {
        (true, None) => x.contiguous()?.apply_op2(&weight.contiguous()?, LinearOp),
        (true, Some(b)) => {
            x.contiguous()?
                .apply_op3(&weight.contiguous()?, &b.contiguous()?, LinearOp)
        }
        (false, None) => x.matmul(&weight.t()?),
        (false, Some(b)) => x.matmul(&weight.t()?)?.broadcast_add(b),
    }
}

/// `layer(xs)` for `xs: (…, in)` as one 2-D GEMM over all leading dimensions.
///
/// candle's `Linear` broadcasts its weight over a 3-D batch, so its backward reduces a
/// `(b, out, in)` gradient over the batch, and it is wrong on transposed views (see the module
/// doc). Flattening first avoids both; the input is made contiguous.
pub fn forward_2d(layer: &Linear, xs: &Tensor) -> Result<Tensor> {
    over_rows(xs, |flat| linear_2d(flat, layer.weight(), layer.bias()))
}

/// Calls with fewer rows than this keep [`Dense`]'s transposed weight.
pub const KEEP_BELOW_ROWS: usize = 2048;

/// A linear layer over `(…, in)` inputs, as [`forward_2d`], that keeps the transposed weight
/// the fused GEMM reads once its weight is known never to change: a plain tensor rather than a
/// `Var` (a loaded scorer or judge), called with nothing to back-propagate. [`forward_2d`]
/// makes that copy on every call: 6% of a ViT-B/32 forward at batch 16 (800 rows), about 1% at
/// 4,000 rows (a ViT-H/14 batch), where keeping it would cost the weight's size again. So the
/// copy is kept when a call has fewer than [`KEEP_BELOW_ROWS`] rows. Same bits either way.
#[derive(Debug, Clone)]
pub struct Dense {
    layer: Linear,
    transposed: Arc<OnceLock<Vec<f32>>>,
}

impl From<Linear> for Dense {
    fn from(layer: Linear) -> Self {
        Self {
            layer,
            transposed: Arc::default(),
        }
    }
}

impl Dense {
    /// The wrapped layer.
    pub fn layer(&self) -> &Linear {
        &self.layer
    }

    /// `(…, in) → (…, out)`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (w, b) = (self.layer.weight(), self.layer.bias());
        over_rows(xs, |flat| {
            let operands: Vec<&Tensor> = [Some(flat), Some(w), b].into_iter().flatten().collect();
            if operands.iter().any(|t| t.track_op()) || !crate::fast_path::applies(&operands) {
                return linear_2d(flat, w, b);
            }
            let dims @ (rows, i, o) = sizes(flat.dims(), w.dims(), b.map(|b| b.dims()))?;
            let (w, b) = (w.contiguous()?, b.map(Tensor::contiguous).transpose()?);
            let (xt, wt) = (
                TensorSlice::new(flat, "linear: input"),
                TensorSlice::new(&w, "linear: weight"),
            );
            let bt = b.as_ref().map(|b| TensorSlice::new(b, "linear: bias"));
            let w = wt.get()?;
            let transposed = match self.transposed.get() {
                Some(kept) => Some(kept.as_slice()),
                None if rows < KEEP_BELOW_ROWS && reads_copy(rows.min(BLOCK), o) => Some(
                    self.transposed
                        .get_or_init(|| transpose(w, o, i))
                        .as_slice(),
                ),
                // many rows amortise the per-call copy (and a kept one costs the weight's size
                // again for the layer's lifetime)
                None => None,
            };
            let bias = bt.as_ref().map(TensorSlice::get).transpose()?;
            let ys = forward_with(xt.get()?, (w, transposed), bias, dims);
            Tensor::from_vec(ys, (rows, o), flat.device())
        })
    }
}

/// `geglu(layer(xs))` for `xs: (…, in)` (diffusers' GEGLU `FeedForward` projection): on the CPU
/// in f32 one fused op that keeps the pre-activation out of the autograd graph
/// ([`crate::linear_geglu`]); elsewhere the linear layer then [`crate::geglu::geglu`].
pub fn geglu_forward_2d(layer: &Linear, xs: &Tensor) -> Result<Tensor> {
    over_rows(xs, |flat| match layer.bias() {
        Some(b) if crate::fast_path::applies(&[flat, layer.weight(), b]) => flat.apply_op3(
            &layer.weight().contiguous()?,
            &b.contiguous()?,
            LinearGeglu::new(flat.track_op() || layer.weight().track_op() || b.track_op()),
        ),
        _ => crate::geglu::geglu(&linear_2d(flat, layer.weight(), layer.bias())?),
    })
}

/// `f` over `xs: (…, in)` flattened to `(rows, in)` (contiguous), its `(rows, out)` result
/// reshaped back to `(…, out)`.
fn over_rows(xs: &Tensor, f: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let dims = xs.dims().to_vec();
    let Some((&in_dim, lead)) = dims.split_last() else {
        candle_core::bail!("linear: scalar input");
    };
    let flat = xs
        .contiguous()?
        .reshape((lead.iter().product::<usize>(), in_dim))?;
    let ys = f(&flat)?;
    let mut out_dims = lead.to_vec();
    out_dims.push(ys.dim(1)?);
    ys.reshape(out_dims)
}

/// `nn.Linear(in_dim, out_dim)`: `weight` `(out_dim, in_dim)` and `bias` `(out_dim,)`.
pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let weight = vb.get_with_hints((out_dim, in_dim), "weight", torch_bound(in_dim))?;
    let bias = vb.get_with_hints(out_dim, "bias", torch_bound(in_dim))?;
    Ok(Linear::new(weight, Some(bias)))
}

/// [`linear`] as a [`Dense`] layer.
pub fn dense(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Dense> {
    linear(in_dim, out_dim, vb).map(Dense::from)
}

/// `nn.Linear(in_dim, out_dim, bias=False)`: `weight` `(out_dim, in_dim)` only.
pub fn linear_no_bias(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let weight = vb.get_with_hints((out_dim, in_dim), "weight", torch_bound(in_dim))?;
    Ok(Linear::new(weight, None))
}

/// [`linear`] or [`linear_no_bias`], chosen by `bias`.
pub fn linear_b(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Linear> {
    if bias {
        linear(in_dim, out_dim, vb)
    } else {
        linear_no_bias(in_dim, out_dim, vb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seeded_init::seeded_var_builder;
    use crate::test_support::bits;
    use candle_core::Module;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    #[test]
    fn shapes_and_torch_bound() -> Result<()> {
        let varmap = VarMap::new();
        let vb = seeded_var_builder(&varmap, 0, DType::F32, &Device::Cpu);
        let layer = linear(16, 5, vb.pp("fc"))?;
        let bound = 0.25f32;
        let w = layer.weight().flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(layer.weight().dims(), &[5, 16]);
        assert!(w.iter().all(|x| x.abs() <= bound));
        let ys = layer.forward(&Tensor::ones((2, 3, 16), DType::F32, &Device::Cpu)?)?;
        assert_eq!(ys.dims(), &[2, 3, 5]);
        let no_bias = linear_b(16, 5, false, vb.pp("proj"))?;
        assert!(no_bias.bias().is_none());
        Ok(())
    }

    #[test]
    fn dense_gives_the_bits_of_forward_2d_with_and_without_its_kept_copy() -> Result<()> {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let trained = linear(
            40,
            24,
            seeded_var_builder(&varmap, 3, DType::F32, &dev).pp("fc"),
        )?;
        // the same weights as plain tensors: what a loaded scorer holds
        let plain = Linear::new(
            trained.weight().detach(),
            trained.bias().map(Tensor::detach),
        );
        let mut rng = crate::rng::SeededRng::new(2);
        for (dense, keeps) in [
            (Dense::from(trained.clone()), false),
            (Dense::from(plain), true),
        ] {
            // 300 rows read the kept copy; 3 rows (72 outputs) keep the in-place path
            for rows in [300, 3, 300] {
                let xs = rng.normal((rows, 40), 0.0, 1.0, DType::F32, &dev)?;
                assert_eq!(
                    bits(&dense.forward(&xs)?)?,
                    bits(&forward_2d(&trained, &xs)?)?
                );
            }
            // a Var may change between calls: nothing is kept for it
            assert_eq!(dense.transposed.get().is_some(), keeps);
        }
        // a layer only ever called with many rows keeps nothing, and gives the same bits
        let plain = Dense::from(Linear::new(
            trained.weight().detach(),
            trained.bias().map(Tensor::detach),
        ));
        let xs = rng.normal((KEEP_BELOW_ROWS, 40), 0.0, 1.0, DType::F32, &dev)?;
        assert_eq!(
            bits(&plain.forward(&xs)?)?,
            bits(&forward_2d(&trained, &xs)?)?
        );
        assert!(plain.transposed.get().is_none());
        Ok(())
    }

    #[test]
    fn dense_records_a_backward_pass_for_trained_weights() -> Result<()> {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let dense = Dense::from(linear(
            6,
            5,
            seeded_var_builder(&varmap, 4, DType::F32, &dev),
        )?);
        let xs = crate::rng::SeededRng::new(3).normal((200, 6), 0.0, 1.0, DType::F32, &dev)?;
        let grads = dense.forward(&xs)?.sum_all()?.backward()?;
        assert!(grads.get(dense.layer().weight()).is_some());
        Ok(())
    }

    #[test]
    fn forward_2d_is_right_on_transposed_batched_views() -> Result<()> {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let layer = linear(
            8,
            3,
            seeded_var_builder(&varmap, 0, DType::F32, &dev).pp("fc"),
        )?;
        let xs = crate::rng::SeededRng::new(1).normal((2, 8, 5), 0.0, 1.0, DType::F32, &dev)?;
        let view = xs.transpose(1, 2)?;
        // reference: the same rows as an explicit 2-D product
        let reference = view
            .contiguous()?
            .broadcast_matmul(&layer.weight().t()?)?
            .broadcast_add(
                layer
                    .bias()
                    .ok_or_else(|| candle_core::Error::Msg("bias".into()))?,
            )?;
        let diff = (forward_2d(&layer, &view)? - reference)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-5, "{diff}");
        Ok(())
    }
}
