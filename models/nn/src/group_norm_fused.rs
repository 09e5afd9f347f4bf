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
//! Statistics are accumulated in f64; the per-element work runs in f32 through the vectorised
//! kernels below (see [`crate::vmath`]). Inputs are f32 on the CPU; other cases use the
//! elementwise path.

use crate::cpu_slice::{TensorSlice, storage_slice};
use crate::vmath::{lane_dot, lane_sum, normaliser, sigmoid, simd_fn};
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

simd_fn! {
    /// `dst ← act(src·scale + shift)`, SiLU when `silu`.
    fn affine_act(dst: &mut [f32], src: &[f32], scale: f32, shift: f32, silu: bool) {
        for (d, &v) in dst.iter_mut().zip(src) {
            let z = v * scale + shift;
            *d = if silu { z * sigmoid(z) } else { z };
        }
    }
}

simd_fn! {
    /// Backward pass 1 over one channel: writes `dz = dy·act'(z)` into `dz` for
    /// `x̂ = x·a + b`, `z = x̂·γ + β`, and returns `(Σ dz, Σ dz·x̂)`.
    fn channel_dz(dz: &mut [f32], x: &[f32], dy: &[f32], ab: (f32, f32), affine: (f32, f32), silu: bool) -> (f32, f32) {
        let ((a, b), (ga, be)) = (ab, affine);
        for ((d, &xv), &g) in dz.iter_mut().zip(x).zip(dy) {
            *d = if silu {
                let z = (xv * a + b) * ga + be;
                let s = sigmoid(z);
                g * s * (1.0 + z * (1.0 - s))
            } else {
                g
            };
        }
        let sum_dz = lane_sum(dz);
        // Σ dz·x̂ = a·Σ dz·x + b·Σ dz
        (sum_dz, a * lane_dot(dz, x) + b * sum_dz)
    }
}

simd_fn! {
    /// Backward pass 2 over one channel: `dx = rstd·(dz·γ − m1 − x̂·m2)`, with `dz` in `dx`.
    fn channel_dx(dx: &mut [f32], x: &[f32], ab: (f32, f32), ga: f32, means: (f32, f32)) {
        let ((a, b), (m1, m2)) = (ab, means);
        for (d, &xv) in dx.iter_mut().zip(x) {
            let xhat = xv * a + b;
            *d = a * (*d * ga - m1 - xhat * m2);
        }
    }
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

    /// `out = act(group_norm(x)·γ + β)` for one sample `x: (c, spatial)`.
    pub(crate) fn forward_sample(&self, x: &[f32], gamma: &[f32], beta: &[f32], out: &mut [f32]) {
        let c = gamma.len().max(1);
        let (cpg, hw) = (c / self.groups, x.len() / c);
        for (g, (dst, src)) in out
            .chunks_mut((cpg * hw).max(1))
            .zip(x.chunks((cpg * hw).max(1)))
            .enumerate()
        {
            let (a, b) = normaliser(src, self.eps);
            for (j, (d, s)) in dst
                .chunks_mut(hw.max(1))
                .zip(src.chunks(hw.max(1)))
                .enumerate()
            {
                let (ga, be) = (gamma[g * cpg + j], beta[g * cpg + j]);
                affine_act(d, s, a * ga, b * ga + be, self.silu);
            }
        }
    }

    /// One sample's backward: writes `dx` for upstream `dy` and returns its `(dγ, dβ)`.
    pub(crate) fn backward_sample(
        &self,
        x: &[f32],
        (gamma, beta): (&[f32], &[f32]),
        dy: &[f32],
        dx: &mut [f32],
    ) -> NormPartials {
        let c = gamma.len();
        let (cpg, hw) = (c / self.groups, x.len() / c.max(1));
        let mut dgamma = vec![0f64; c];
        let mut dbeta = vec![0f64; c];
        for g in 0..self.groups {
            let group = g * cpg * hw..(g + 1) * cpg * hw;
            let ab = normaliser(&x[group.clone()], self.eps);
            // m1 = mean(dx̂), m2 = mean(dx̂·x̂) with dx̂ = dz·γ
            let (mut m1, mut m2) = (0f64, 0f64);
            for ci in g * cpg..(g + 1) * cpg {
                let ch = ci * hw..(ci + 1) * hw;
                let affine = (gamma[ci], beta[ci]);
                let (sdz, sdzx) = channel_dz(
                    &mut dx[ch.clone()],
                    &x[ch.clone()],
                    &dy[ch],
                    ab,
                    affine,
                    self.silu,
                );
                dbeta[ci] += sdz as f64;
                dgamma[ci] += sdzx as f64;
                m1 += sdz as f64 * gamma[ci] as f64;
                m2 += sdzx as f64 * gamma[ci] as f64;
            }
            let n = (cpg * hw) as f64;
            let means = ((m1 / n) as f32, (m2 / n) as f32);
            for ((dx_c, x_c), &ga) in dx[group.clone()]
                .chunks_mut(hw.max(1))
                .zip(x[group].chunks(hw.max(1)))
                .zip(&gamma[g * cpg..(g + 1) * cpg])
            {
                channel_dx(dx_c, x_c, ab, ga, means);
            }
        }
        (dgamma, dbeta)
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
        let mut dx = vec![0f32; x.len()];
        // per sample: (dγ, dβ) partial sums, added in sample order
        let partials: Vec<NormPartials> = dx
            .par_chunks_mut((c * hw).max(1))
            .zip(
                x.par_chunks((c * hw).max(1))
                    .zip(dy.par_chunks((c * hw).max(1))),
            )
            .map(|(dx_b, (x_b, dy_b))| self.backward_sample(x_b, (gamma, beta), dy_b, dx_b))
            .collect();
        let (dgamma, dbeta) = sum_partials(&partials, c);
        debug_assert_eq!(dx.len(), b * c * hw);
        Ok((dx, dgamma, dbeta))
    }
}

/// One sample's `(dγ, dβ)`, accumulated in f64.
pub(crate) type NormPartials = (Vec<f64>, Vec<f64>);

/// Per-sample `(dγ, dβ)` partials summed in sample order, as f32.
pub(crate) fn sum_partials(partials: &[NormPartials], c: usize) -> (Vec<f32>, Vec<f32>) {
    let sum = |pick: fn(&NormPartials) -> &Vec<f64>| -> Vec<f32> {
        (0..c)
            .map(|ci| partials.iter().map(|p| pick(p)[ci]).sum::<f64>() as f32)
            .collect()
    };
    (sum(|p| &p.0), sum(|p| &p.1))
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
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut((c * hw).max(1))
            .zip(x.par_chunks((c * hw).max(1)))
            .for_each(|(dst, src)| self.forward_sample(src, gamma, beta, dst));
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
        let slices = [
            TensorSlice::new(xs, "group norm: x"),
            TensorSlice::new(gamma, "group norm: weight"),
            TensorSlice::new(beta, "group norm: bias"),
            TensorSlice::new(&grad, "group norm: output gradient"),
        ];
        let (dx, dgamma, dbeta) = self.backward(
            slices[0].get()?,
            slices[1].get()?,
            slices[2].get()?,
            slices[3].get()?,
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
