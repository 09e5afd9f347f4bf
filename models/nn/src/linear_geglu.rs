//! A linear layer followed by GEGLU, `geglu(x·Wᵀ + b)`, as one CPU op: diffusers'
//! `FeedForward` input projection and activation.
//!
//! As two ops, the `(rows, 2d)` pre-activation between them is a tensor of the autograd graph:
//! candle adds its gradient into a fresh zero tensor of that size, the largest edge of a
//! transformer block. Here forward keeps the pre-activation and Φ(g) inside the op when a
//! gradient will be taken (up to 64 MiB, else backward recomputes them), and backward goes
//! from `dy` to the pre-activation's gradient and on to `dx`, `dW`, `db` without a tensor in
//! between. Values and gradients are those of [`crate::linear_fused`] then [`crate::geglu`],
//! bit for bit.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu_slice::{TensorSlice, grad_tensor, storage_slice};
use crate::geglu::{geglu_backward_row, geglu_backward_row_kept, geglu_row};
use crate::kept::Kept;
use crate::linear_fused::{backward, forward, sizes};

/// `geglu(x·Wᵀ + b)` for `x: (rows, in)`, `W: (2d, in)`, `b: (2d,)`, returning `(rows, d)`
/// (f32, CPU, contiguous operands).
#[derive(Debug)]
pub struct LinearGeglu {
    /// The pre-activation `(rows, 2d)` and Φ(g) `(rows, d)`, when kept.
    kept: Kept<(Vec<f32>, Vec<f32>)>,
}

impl LinearGeglu {
    /// The op; `keep` keeps the pre-activation and Φ(g) for backward (set it when a gradient
    /// will be taken).
    pub fn new(keep: bool) -> Self {
        Self {
            kept: Kept::new("linear-geglu", keep),
        }
    }
}

/// `(rows, in, 2d)` after checking the operands; `2d` must be even.
fn dims(x: &[usize], w: &[usize], b: &[usize]) -> Result<(usize, usize, usize)> {
    let dims = sizes(x, w, Some(b))?;
    if dims.2 % 2 != 0 {
        candle_core::bail!("linear-geglu: output width {} must be even", dims.2);
    }
    Ok(dims)
}

impl CustomOp3 for LinearGeglu {
    fn name(&self) -> &'static str {
        "linear-geglu"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims @ (rows, _, o2) = dims(xl.dims(), wl.dims(), bl.dims())?;
        let x = storage_slice(xs, xl, "linear-geglu: input")?;
        let w = storage_slice(ws, wl, "linear-geglu: weight")?;
        let b = storage_slice(bs, bl, "linear-geglu: bias")?;
        let d = o2 / 2;
        let pre = forward(x, w, Some(b), dims);
        let mut out = vec![0f32; rows * d];
        let mut cdf = vec![0f32; rows * d];
        if d > 0 {
            out.par_chunks_mut(d)
                .zip(cdf.par_chunks_mut(d).zip(pre.par_chunks(o2)))
                .for_each(|(dst, (c, row))| geglu_row(dst, c, row));
        }
        if self.kept.wants(pre.len() + cdf.len()) {
            self.kept.store((pre, cdf))?;
        }
        Ok((CpuStorage::F32(out), Shape::from((rows, d))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dims @ (rows, _, o2) = dims(x.dims(), w.dims(), b.dims())?;
        let d = o2 / 2;
        let grad = grad.contiguous()?;
        let (xt, wt, bt, gt) = (
            TensorSlice::new(x, "linear-geglu: input"),
            TensorSlice::new(w, "linear-geglu: weight"),
            TensorSlice::new(b, "linear-geglu: bias"),
            TensorSlice::new(&grad, "linear-geglu: output gradient"),
        );
        let (xv, wv, dy) = (xt.get()?, wt.get()?, gt.get()?);
        // the pre-activation's gradient, from the kept values or recomputed ones
        let mut dpre = vec![0f32; rows * o2];
        let kept = self.kept.get()?;
        if d > 0 {
            let rows_iter = dpre.par_chunks_mut(o2).zip(dy.par_chunks(d));
            match kept.as_ref() {
                Some((pre, cdf)) => rows_iter
                    .zip(pre.par_chunks(o2).zip(cdf.par_chunks(d)))
                    .for_each(|((dst, g), (row, c))| geglu_backward_row_kept(dst, row, g, c)),
                None => {
                    let pre = forward(xv, wv, Some(bt.get()?), dims);
                    rows_iter
                        .zip(pre.par_chunks(o2))
                        .for_each(|((dst, g), row)| geglu_backward_row(dst, row, g));
                }
            }
        }
        let wanted = [x.track_op(), w.track_op(), b.track_op()];
        let [dx, dw, db] = backward((xv, wv, &dpre), dims, wanted);
        Ok((
            grad_tensor(dx, x)?,
            grad_tensor(dw, w)?,
            grad_tensor(db, b)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::LinearGeglu;
    use crate::linear::linear_2d;
    use crate::rng::SeededRng;
    use crate::test_support::output_and_grads;
    use candle_core::{DType, Device, Result, Tensor, Var};

    #[test]
    fn equals_linear_then_geglu_bit_for_bit_kept_or_recomputed() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = SeededRng::new(24);
        // 300 rows: more than two row blocks
        let x = Var::from_tensor(&rng.normal((300, 6), 0.0, 1.0, DType::F32, &dev)?)?;
        let w = Var::from_tensor(&rng.normal((10, 6), 0.0, 0.5, DType::F32, &dev)?)?;
        let b = Var::from_tensor(&rng.normal(10, 0.0, 0.5, DType::F32, &dev)?)?;
        let composed = crate::geglu::geglu(&linear_2d(&x, &w, Some(&b))?)?;
        let want = output_and_grads(&composed, &[&x, &w, &b])?;
        for keep in [true, false] {
            let fused = x.apply_op3(&w, &b, LinearGeglu::new(keep))?;
            assert_eq!(
                output_and_grads(&fused, &[&x, &w, &b])?,
                want,
                "keep = {keep}"
            );
        }
        Ok(())
    }

    #[test]
    fn an_odd_output_width_is_an_error() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::zeros((4, 3), DType::F32, &dev)?;
        let w = Tensor::zeros((5, 3), DType::F32, &dev)?;
        let b = Tensor::zeros(5, DType::F32, &dev)?;
        assert!(x.apply_op3(&w, &b, LinearGeglu::new(false)).is_err());
        Ok(())
    }
}
