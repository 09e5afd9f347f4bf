//! GEGLU (`h·gelu(g)` with `(h, g)` the two halves of the last dimension) as one CPU kernel with
//! an analytic backward, as diffusers' `FeedForward(activation_fn="geglu")` computes it.
//!
//! The composed form (chunk, exact GELU, multiply) records a `narrow` per half whose backward
//! pads a full-size zero tensor; here `dh = dy·gelu(g)` and `dg = dy·h·(Φ(g) + g·φ(g))` are
//! written straight into one `(…, 2·d)` gradient; Φ(g) is kept from the forward pass when a
//! gradient will be taken (up to 64 MiB), so backward computes one `exp` per element instead of
//! an `erf` and an `exp`. f32 on the CPU; [`geglu`] falls back to the composed form elsewhere.

use crate::cpu_slice::{TensorSlice, storage_slice};
use crate::kept::Kept;
use crate::vmath::{erf, exp, simd_fn};
use candle_core::{CpuStorage, CustomOp1, D, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `(…, 2d) → (…, d)`: first half times exact GELU of the second half (f32, CPU).
#[derive(Debug)]
pub struct Geglu {
    /// Φ(g) of every output element, when kept.
    cdf: Kept<Vec<f32>>,
}

impl Geglu {
    /// The op; `keep_cdf` keeps Φ(g) for backward (set it when a gradient will be taken).
    pub fn new(keep_cdf: bool) -> Self {
        Self {
            cdf: Kept::new("geglu", keep_cdf),
        }
    }
}

/// Φ(x), the standard normal CDF.
#[inline(always)]
fn phi_cdf(x: f32) -> f32 {
    0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

simd_fn! {
    /// One row: `out = h·gelu(g)` for `row = (h, g)`, with Φ(g) into `cdf`.
    pub(crate) fn geglu_row(out: &mut [f32], cdf: &mut [f32], row: &[f32]) {
        let (h, g) = row.split_at(out.len());
        for (((o, c), &h), &g) in out.iter_mut().zip(cdf.iter_mut()).zip(h).zip(g) {
            *c = phi_cdf(g);
            *o = h * g * *c;
        }
    }
}

/// `(dh, dg) = (dy·g·Φ(g), dy·h·(Φ(g) + g·φ(g)))`.
#[inline(always)]
fn geglu_grad(h: f32, g: f32, dy: f32, cdf: f32) -> (f32, f32) {
    let inv_sqrt_2pi = 0.5 * std::f32::consts::FRAC_2_SQRT_PI * std::f32::consts::FRAC_1_SQRT_2;
    let pdf = exp(-0.5 * g * g) * inv_sqrt_2pi;
    (dy * g * cdf, dy * h * (cdf + g * pdf))
}

simd_fn! {
    /// One row's gradient, Φ(g) recomputed.
    pub(crate) fn geglu_backward_row(dx: &mut [f32], row: &[f32], dy: &[f32]) {
        let d = dy.len();
        let (h, g) = row.split_at(d);
        let (dh, dg) = dx.split_at_mut(d);
        for ((((dh, dg), &h), &g), &dy) in dh.iter_mut().zip(dg).zip(h).zip(g).zip(dy) {
            (*dh, *dg) = geglu_grad(h, g, dy, phi_cdf(g));
        }
    }
}

simd_fn! {
    /// One row's gradient from the Φ(g) forward kept.
    pub(crate) fn geglu_backward_row_kept(dx: &mut [f32], row: &[f32], dy: &[f32], cdf: &[f32]) {
        let d = dy.len();
        let (h, g) = row.split_at(d);
        let (dh, dg) = dx.split_at_mut(d);
        for (((((dh, dg), &h), &g), &dy), &c) in dh.iter_mut().zip(dg).zip(h).zip(g).zip(dy).zip(cdf) {
            (*dh, *dg) = geglu_grad(h, g, dy, c);
        }
    }
}

fn last_dim(layout: &Layout) -> Result<usize> {
    let d2 = layout.dims().last().copied().unwrap_or(0);
    if d2 == 0 || d2 % 2 != 0 {
        candle_core::bail!("geglu: last dimension {d2} must be even and non-zero");
    }
    Ok(d2)
}

impl CustomOp1 for Geglu {
    fn name(&self) -> &'static str {
        "geglu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = storage_slice(storage, layout, "geglu: input")?;
        let d2 = last_dim(layout)?;
        let d = d2 / 2;
        let mut out = vec![0f32; src.len() / 2];
        if self.cdf.wants(out.len()) {
            let mut cdf = vec![0f32; out.len()];
            out.par_chunks_mut(d)
                .zip(cdf.par_chunks_mut(d).zip(src.par_chunks(d2)))
                .for_each(|(dst, (c, row))| geglu_row(dst, c, row));
            self.cdf.store(cdf)?;
        } else {
            out.par_chunks_mut(d)
                .zip(src.par_chunks(d2))
                .for_each_init(|| vec![0f32; d], |c, (dst, row)| geglu_row(dst, c, row));
        }
        let mut dims = layout.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = d;
        }
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad_res.contiguous()?;
        let (xt, gt) = (
            TensorSlice::new(arg, "geglu: input"),
            TensorSlice::new(&grad, "geglu: output gradient"),
        );
        let (x, dy) = (xt.get()?, gt.get()?);
        let d2 = last_dim(arg.layout())?;
        let mut dx = vec![0f32; x.len()];
        let kept = self.cdf.get()?;
        let rows = dx
            .par_chunks_mut(d2)
            .zip(x.par_chunks(d2).zip(dy.par_chunks(d2 / 2)));
        match kept.as_ref() {
            Some(cdf) => rows
                .zip(cdf.par_chunks(d2 / 2))
                .for_each(|((dst, (row, g_row)), c)| geglu_backward_row_kept(dst, row, g_row, c)),
            None => rows.for_each(|(dst, (row, g_row))| geglu_backward_row(dst, row, g_row)),
        }
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}

/// `h·gelu(g)` for `(h, g) = xs.chunk(2, -1)`, differentiable on every device.
pub fn geglu(xs: &Tensor) -> Result<Tensor> {
    if crate::fast_path::applies(&[xs]) {
        return xs.contiguous()?.apply_op1(Geglu::new(xs.track_op()));
    }
    let halves = xs.chunk(2, D::Minus1)?;
    &halves[0] * halves[1].gelu_erf()?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SeededRng;
    use crate::test_support::output_and_grads;
    use candle_core::{DType, Device, Var};

    #[test]
    fn matches_composed_geglu_values_and_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = SeededRng::new(13);
        let x = Var::from_tensor(&rng.normal((2, 5, 8), 0.0, 2.0, DType::F32, &dev)?)?;
        let fast = geglu(x.as_tensor())?;
        let halves = x.as_tensor().chunk(2, D::Minus1)?;
        let plain = (&halves[0] * halves[1].gelu_erf()?)?;
        let diff = |a: &Tensor, b: &Tensor| -> Result<f32> {
            (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
        };
        assert!(diff(&fast, &plain)? < 1e-5);
        let probe = rng.normal((2, 5, 4), 0.0, 1.0, DType::F32, &dev)?;
        let g_fast = (fast * &probe)?.sum_all()?.backward()?;
        let g_plain = (plain * &probe)?.sum_all()?.backward()?;
        let (Some(a), Some(b)) = (g_fast.get(&x), g_plain.get(&x)) else {
            panic!("missing gradient");
        };
        assert!(diff(a, b)? < 1e-4, "{}", diff(a, b)?);
        Ok(())
    }

    #[test]
    fn kept_and_recomputed_cdf_give_identical_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&SeededRng::new(14).normal(
            (3, 4, 10),
            0.0,
            2.0,
            DType::F32,
            &dev,
        )?)?;
        let run = |keep: bool| -> Result<Vec<Vec<f32>>> {
            output_and_grads(&x.as_tensor().apply_op1(Geglu::new(keep))?, &[&x])
        };
        assert_eq!(run(true)?, run(false)?);
        Ok(())
    }
}
