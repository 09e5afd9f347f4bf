//! GroupNorm, optionally followed by SiLU, as one CPU kernel with an analytic backward.
//!
//! The elementwise GroupNorm of [`crate::group_norm`] records ~10 tensor ops forward and twice
//! that backward, each allocating a full-size buffer; in a small UNet on the CPU that costs more
//! than the convolutions. This op computes `y = act((x − μ_g)/σ_g · γ_c + β_c)` in one pass and,
//! backward, recomputes the statistics and returns all three gradients in one more:
//!
//! `dz = dy · act'(z)`, `dβ_c = Σ dz`, `dγ_c = Σ dz·x̂`,
//! `dx = (1/σ_g)·(dx̂ − mean_g(dx̂) − x̂·mean_g(dx̂·x̂))` with `dx̂ = dz·γ_c`.
//!
//! Statistics are accumulated in f64. Inputs are f32 on the CPU; other cases use the
//! elementwise path.

use crate::cpu_slice::storage_slice;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `act(group_norm(x)·γ + β)` over `(b, c, …)` with `groups` groups; `silu` selects the activation.
#[derive(Debug, Clone, Copy)]
pub struct GroupNormAct {
    /// Number of groups.
    pub groups: usize,
    /// Added to the variance.
    pub eps: f64,
    /// Apply SiLU after the affine map.
    pub silu: bool,
}

fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

impl GroupNormAct {
    /// (batch, channels, spatial size) of `dims`, checked against the group count.
    fn sizes(&self, dims: &[usize]) -> Result<(usize, usize, usize)> {
        if dims.len() < 3 {
            candle_core::bail!("group norm: input rank must be at least 3, got {dims:?}");
        }
        let (b, c) = (dims[0], dims[1]);
        if self.groups == 0 || !c.is_multiple_of(self.groups) {
            candle_core::bail!(
                "group norm: {} groups do not divide {c} channels",
                self.groups
            );
        }
        Ok((b, c, dims[2..].iter().product()))
    }

    /// Mean and 1/σ of one group's values.
    fn stats(&self, xs: &[f32]) -> (f64, f64) {
        let n = xs.len() as f64;
        let mean = xs.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = xs.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        (mean, 1.0 / (var + self.eps).sqrt())
    }

    /// Gradients `(dx, dγ, dβ)` for upstream gradient `dy`.
    fn backward(
        &self,
        x: &[f32],
        gamma: &[f32],
        beta: &[f32],
        dy: &[f32],
        dims: &[usize],
    ) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let (b, c, hw) = self.sizes(dims)?;
        let cpg = c / self.groups;
        let mut dx = vec![0f32; x.len()];
        // per sample: (dγ, dβ) partial sums
        let partials: Vec<(Vec<f64>, Vec<f64>)> = dx
            .par_chunks_mut(c * hw)
            .zip(x.par_chunks(c * hw).zip(dy.par_chunks(c * hw)))
            .map(|(dx_b, (x_b, dy_b))| {
                let mut dgamma = vec![0f64; c];
                let mut dbeta = vec![0f64; c];
                for g in 0..self.groups {
                    let range = g * cpg * hw..(g + 1) * cpg * hw;
                    let (mean, rstd) = self.stats(&x_b[range.clone()]);
                    let (mut m1, mut m2) = (0f64, 0f64);
                    // pass 1: dz, dγ, dβ and the two group means; dx_b holds dx̂ for now
                    for ci in g * cpg..(g + 1) * cpg {
                        let (ga, be) = (gamma[ci] as f64, beta[ci] as f64);
                        for i in ci * hw..(ci + 1) * hw {
                            let xhat = (x_b[i] as f64 - mean) * rstd;
                            let mut dz = dy_b[i] as f64;
                            if self.silu {
                                let z = xhat * ga + be;
                                let s = sigmoid(z as f32) as f64;
                                dz *= s * (1.0 + z * (1.0 - s));
                            }
                            dbeta[ci] += dz;
                            dgamma[ci] += dz * xhat;
                            let dxhat = dz * ga;
                            m1 += dxhat;
                            m2 += dxhat * xhat;
                            dx_b[i] = dxhat as f32;
                        }
                    }
                    let n = (cpg * hw) as f64;
                    let (m1, m2) = (m1 / n, m2 / n);
                    // pass 2: dx = rstd·(dx̂ − m1 − x̂·m2)
                    for i in range {
                        let xhat = (x_b[i] as f64 - mean) * rstd;
                        dx_b[i] = (rstd * (dx_b[i] as f64 - m1 - xhat * m2)) as f32;
                    }
                }
                (dgamma, dbeta)
            })
            .collect();
        let mut dgamma = vec![0f32; c];
        let mut dbeta = vec![0f32; c];
        for ci in 0..c {
            dgamma[ci] = partials.iter().map(|p| p.0[ci]).sum::<f64>() as f32;
            dbeta[ci] = partials.iter().map(|p| p.1[ci]).sum::<f64>() as f32;
        }
        debug_assert_eq!(dx.len(), b * c * hw);
        Ok((dx, dgamma, dbeta))
    }
}

impl CustomOp3 for GroupNormAct {
    fn name(&self) -> &'static str {
        "group-norm-act"
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
            storage_slice(xs, xl, "group norm: x")?,
            storage_slice(gs, gl, "group norm: weight")?,
            storage_slice(bs, bl, "group norm: bias")?,
        );
        let (_, c, hw) = self.sizes(xl.dims())?;
        let cpg = c / self.groups;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(cpg * hw)
            .zip(x.par_chunks(cpg * hw))
            .enumerate()
            .for_each(|(bg, (dst, src))| {
                let (mean, rstd) = self.stats(src);
                let c0 = (bg % self.groups) * cpg;
                for (j, (d, &v)) in dst.iter_mut().zip(src).enumerate() {
                    let ci = c0 + j / hw;
                    let z = ((v as f64 - mean) * rstd) as f32 * gamma[ci] + beta[ci];
                    *d = if self.silu { z * sigmoid(z) } else { z };
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
        let flat = |t: &Tensor| -> Result<Vec<f32>> { t.flatten_all()?.to_vec1::<f32>() };
        let (dx, dgamma, dbeta) = self.backward(
            &flat(xs)?,
            &flat(gamma)?,
            &flat(beta)?,
            &flat(grad)?,
            xs.dims(),
        )?;
        let dev = xs.device();
        Ok((
            Some(Tensor::from_vec(dx, xs.shape(), dev)?),
            Some(Tensor::from_vec(dgamma, gamma.shape(), dev)?),
            Some(Tensor::from_vec(dbeta, beta.shape(), dev)?),
        ))
    }
}
