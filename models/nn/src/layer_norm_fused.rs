//! LayerNorm over the last dimension as one CPU kernel with an analytic backward.
//!
//! Same idea as [`crate::group_norm_fused`], per row of length `d`:
//! `y = x̂·γ + β` with `x̂ = (x − μ)/σ`; backward `dβ = Σ_rows dy`, `dγ = Σ_rows dy·x̂`,
//! `dx = (1/σ)·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂))` with `dx̂ = dy·γ`. Statistics in f64, the
//! per-element work in f32 through vectorised kernels ([`crate::vmath`]).

use crate::cpu_slice::{TensorSlice, storage_slice};
use crate::vmath::{lane_dot, lane_sum, normaliser, simd_fn};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Rows per parallel work unit.
const ROWS_PER_UNIT: usize = 64;

/// `layer_norm(x)·γ + β` over the last dimension (f32, CPU).
#[derive(Debug, Clone, Copy)]
pub struct LayerNormAffine {
    /// Added to the variance.
    pub eps: f64,
}

simd_fn! {
    /// One row: `y = (x·a + b)·γ + β`.
    fn affine_row(y: &mut [f32], x: &[f32], ab: (f32, f32), gamma: &[f32], beta: &[f32]) {
        let (a, b) = ab;
        for (((o, &v), &g), &be) in y.iter_mut().zip(x).zip(gamma).zip(beta) {
            *o = (v * a + b) * g + be;
        }
    }
}

simd_fn! {
    /// One row's backward: `dx` from `dy`, adding the row's `dy·x̂` and `dy` into `dgamma` and
    /// `dbeta`.
    fn backward_row(
        dx: &mut [f32],
        x: &[f32],
        dy: &[f32],
        ab: (f32, f32),
        gamma: &[f32],
        acc: (&mut [f32], &mut [f32]),
    ) {
        let ((a, b), (dgamma, dbeta)) = (ab, acc);
        for (((((d, &v), &g), &ga), dg), db) in dx
            .iter_mut()
            .zip(x)
            .zip(dy)
            .zip(gamma)
            .zip(dgamma.iter_mut())
            .zip(dbeta.iter_mut())
        {
            *d = g * ga;
            *dg += g * (v * a + b);
            *db += g;
        }
        // m1 = mean(dx̂), m2 = mean(dx̂·x̂) = (a·Σ dx̂·x + b·Σ dx̂)/d
        let n = dx.len().max(1) as f32;
        let sum = lane_sum(dx);
        let (m1, m2) = (sum / n, (a * lane_dot(dx, x) + b * sum) / n);
        for (d, &v) in dx.iter_mut().zip(x) {
            *d = a * (*d - m1 - (v * a + b) * m2);
        }
    }
}

impl CustomOp3 for LayerNormAffine {
    fn name(&self) -> &'static str {
        "layer-norm-affine"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, gamma, beta) = (
            storage_slice(xs, xl, "layer norm: x")?,
            storage_slice(gs, gl, "layer norm: weight")?,
            storage_slice(bs, bl, "layer norm: bias")?,
        );
        let d = gamma.len();
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(d)
            .zip(x.par_chunks(d))
            .for_each(|(dst, row)| affine_row(dst, row, normaliser(row, self.eps), gamma, beta));
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn bwd(
        &self,
        xs: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (xt, gt, dyt) = (
            TensorSlice::new(xs, "layer norm: x"),
            TensorSlice::new(gamma, "layer norm: weight"),
            TensorSlice::new(&grad, "layer norm: output gradient"),
        );
        let (x, g, dy) = (xt.get()?, gt.get()?, dyt.get()?);
        let d = g.len();
        let mut dx = vec![0f32; x.len()];
        // per unit of rows: (dγ, dβ) partial sums, added across units in f64
        let partials: Vec<(Vec<f32>, Vec<f32>)> = dx
            .par_chunks_mut(d * ROWS_PER_UNIT)
            .zip(
                x.par_chunks(d * ROWS_PER_UNIT)
                    .zip(dy.par_chunks(d * ROWS_PER_UNIT)),
            )
            .map(|(dx_u, (x_u, dy_u))| {
                let (mut dgamma, mut dbeta) = (vec![0f32; d], vec![0f32; d]);
                for ((dx_r, x_r), dy_r) in dx_u.chunks_mut(d).zip(x_u.chunks(d)).zip(dy_u.chunks(d))
                {
                    let ab = normaliser(x_r, self.eps);
                    backward_row(dx_r, x_r, dy_r, ab, g, (&mut dgamma, &mut dbeta));
                }
                (dgamma, dbeta)
            })
            .collect();
        let sum = |k: usize| -> Vec<f32> {
            (0..d)
                .map(|j| {
                    partials
                        .iter()
                        .map(|p| f64::from(if k == 0 { p.0[j] } else { p.1[j] }))
                        .sum::<f64>() as f32
                })
                .collect()
        };
        let dev = xs.device();
        Ok((
            Some(Tensor::from_vec(dx, xs.shape(), dev)?),
            Some(Tensor::from_vec(sum(0), gamma.shape(), dev)?),
            Some(Tensor::from_vec(sum(1), beta.shape(), dev)?),
        ))
    }
}
