//! LayerNorm over the last dimension as one CPU kernel with an analytic backward.
//!
//! Same idea as [`crate::group_norm_fused`], per row of length `d`:
//! `y = x̂·γ + β` with `x̂ = (x − μ)/σ`; backward `dβ = Σ_rows dy`, `dγ = Σ_rows dy·x̂`,
//! `dx = (1/σ)·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂))` with `dx̂ = dy·γ`. Statistics in f64.

use crate::cpu_slice::storage_slice;
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

impl LayerNormAffine {
    fn stats(&self, row: &[f32]) -> (f64, f64) {
        let n = row.len() as f64;
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        (mean, 1.0 / (var + self.eps).sqrt())
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
            .for_each(|(dst, row)| {
                let (mean, rstd) = self.stats(row);
                for (j, (o, &v)) in dst.iter_mut().zip(row).enumerate() {
                    *o = ((v as f64 - mean) * rstd) as f32 * gamma[j] + beta[j];
                }
            });
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
        let x = xs.flatten_all()?.to_vec1::<f32>()?;
        let g = gamma.to_vec1::<f32>()?;
        let dy = grad.flatten_all()?.to_vec1::<f32>()?;
        let d = g.len();
        let mut dx = vec![0f32; x.len()];
        let partials: Vec<(Vec<f64>, Vec<f64>)> = dx
            .par_chunks_mut(d * ROWS_PER_UNIT)
            .zip(
                x.par_chunks(d * ROWS_PER_UNIT)
                    .zip(dy.par_chunks(d * ROWS_PER_UNIT)),
            )
            .map(|(dx_u, (x_u, dy_u))| {
                let (mut dgamma, mut dbeta) = (vec![0f64; d], vec![0f64; d]);
                for ((dx_r, x_r), dy_r) in dx_u.chunks_mut(d).zip(x_u.chunks(d)).zip(dy_u.chunks(d))
                {
                    let (mean, rstd) = self.stats(x_r);
                    let (mut m1, mut m2) = (0f64, 0f64);
                    for j in 0..d {
                        let xhat = (x_r[j] as f64 - mean) * rstd;
                        let dyj = dy_r[j] as f64;
                        dbeta[j] += dyj;
                        dgamma[j] += dyj * xhat;
                        let dxhat = dyj * g[j] as f64;
                        m1 += dxhat;
                        m2 += dxhat * xhat;
                    }
                    let (m1, m2) = (m1 / d as f64, m2 / d as f64);
                    for j in 0..d {
                        let xhat = (x_r[j] as f64 - mean) * rstd;
                        let dxhat = dy_r[j] as f64 * g[j] as f64;
                        dx_r[j] = (rstd * (dxhat - m1 - xhat * m2)) as f32;
                    }
                }
                (dgamma, dbeta)
            })
            .collect();
        let sum = |k: usize| -> Vec<f32> {
            (0..d)
                .map(|j| {
                    partials
                        .iter()
                        .map(|p| if k == 0 { p.0[j] } else { p.1[j] })
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
