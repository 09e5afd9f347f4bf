//! Convolution as im2col + GEMM on the CPU, with a recorded backward pass.
//!
//! candle 0.11's CPU `conv2d` is 10–20× slower than PyTorch's oneDNN, and its backward is worse
//! (the input gradient is a direct `conv_transpose2d`). Here a convolution is
//! `Y = W·cols(x) + bias`, where `cols` unfolds every k×k patch of every image into a column
//! (`(c·k·k, b·h_out·w_out)`, images side by side) so that one GEMM covers the whole batch.
//! [`Im2Col`] and its adjoint [`Col2Im`] are custom ops whose backward passes are each other;
//! the GEMM is candle's `matmul`, whose backward gives the weight gradient (`grad_Y·colsᵀ`, one
//! GEMM with no batch reduction) and the column gradient (`Wᵀ·grad_Y`).

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Geometry of a square-kernel convolution over an `h × w` input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatchGeometry {
    /// Input channels.
    pub channels: usize,
    /// Input height and width.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Kernel size.
    pub k: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on each side.
    pub pad: usize,
}

impl PatchGeometry {
    /// Output height and width.
    pub fn out_hw(&self) -> (usize, usize) {
        (
            (self.h + 2 * self.pad - self.k) / self.stride + 1,
            (self.w + 2 * self.pad - self.k) / self.stride + 1,
        )
    }

    /// For kernel offset `kj` and output column range, the valid output columns `[lo, hi)` whose
    /// input column `ow·stride + kj − pad` lies inside `[0, w)`.
    fn valid_cols(&self, kj: usize, w_out: usize) -> (usize, usize) {
        let first = |ow: usize| ow * self.stride + kj;
        let lo = (0..w_out)
            .find(|&ow| first(ow) >= self.pad)
            .unwrap_or(w_out);
        let hi = (lo..w_out)
            .find(|&ow| first(ow) >= self.pad + self.w)
            .unwrap_or(w_out);
        (lo, hi)
    }

    /// Unfolds channel plane `plane` (`h × w`) of image `b` into the `k·k` rows of that
    /// channel, `rows` (`(k·k, batch·h_out·w_out)`).
    fn unfold_plane(&self, plane: &[f32], b: usize, batch: usize, rows: &mut [f32]) {
        let (h_out, w_out) = self.out_hw();
        let (k, s, p) = (self.k, self.stride, self.pad);
        let n = h_out * w_out;
        for (ki, kj) in (0..k).flat_map(|ki| (0..k).map(move |kj| (ki, kj))) {
            let row = (ki * k + kj) * batch * n + b * n;
            let (lo, hi) = self.valid_cols(kj, w_out);
            for oh in 0..h_out {
                let dst = &mut rows[row + oh * w_out..row + (oh + 1) * w_out];
                let ih = (oh * s + ki) as isize - p as isize;
                if ih < 0 || ih >= self.h as isize {
                    dst.fill(0.0);
                    continue;
                }
                let src = &plane[ih as usize * self.w..(ih as usize + 1) * self.w];
                dst[..lo].fill(0.0);
                dst[hi..].fill(0.0);
                if s == 1 {
                    let iw0 = lo + kj - p;
                    dst[lo..hi].copy_from_slice(&src[iw0..iw0 + (hi - lo)]);
                } else {
                    for (ow, d) in dst.iter_mut().enumerate().take(hi).skip(lo) {
                        *d = src[ow * s + kj - p];
                    }
                }
            }
        }
    }

    /// Adds image `b`'s columns (`(c·k·k, batch·h_out·w_out)`) back into its `(c, h, w)`
    /// (the adjoint of unfolding).
    fn fold(&self, cols: &[f32], b: usize, batch: usize, image: &mut [f32]) {
        let (h_out, w_out) = self.out_hw();
        let (k, s, p) = (self.k, self.stride, self.pad);
        let n = h_out * w_out;
        image.fill(0.0);
        for c in 0..self.channels {
            let plane = &mut image[c * self.h * self.w..(c + 1) * self.h * self.w];
            for ki in 0..k {
                for kj in 0..k {
                    let row = ((c * k + ki) * k + kj) * batch * n + b * n;
                    let (lo, hi) = self.valid_cols(kj, w_out);
                    for oh in 0..h_out {
                        let ih = (oh * s + ki) as isize - p as isize;
                        if ih < 0 || ih >= self.h as isize {
                            continue;
                        }
                        let src = &cols[row + oh * w_out..row + (oh + 1) * w_out];
                        let dst = &mut plane[ih as usize * self.w..(ih as usize + 1) * self.w];
                        for ow in lo..hi {
                            dst[ow * s + kj - p] += src[ow];
                        }
                    }
                }
            }
        }
    }
}

fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    if !layout.is_contiguous() {
        candle_core::bail!("{op}: input must be contiguous");
    }
    let data = storage.as_slice::<f32>()?;
    Ok(&data[layout.start_offset()..layout.start_offset() + layout.shape().elem_count()])
}

/// `(b, c, h, w) → (c·k·k, b·h_out·w_out)` (f32, CPU); backward is [`Col2Im`].
#[derive(Debug, Clone, Copy)]
pub struct Im2Col(pub PatchGeometry);

/// `(c·k·k, b·h_out·w_out) → (b, c, h, w)`, summing overlapping patches (f32, CPU); backward
/// is [`Im2Col`].
#[derive(Debug, Clone, Copy)]
pub struct Col2Im(pub PatchGeometry);

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "im2col"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let x = contiguous_f32(storage, layout, "im2col")?;
        let b = layout.dims()[0];
        let (h_out, w_out) = g.out_hw();
        let n = h_out * w_out;
        let plane = g.h * g.w;
        let mut cols = vec![0f32; g.channels * g.k * g.k * b * n];
        // each channel owns k·k consecutive rows
        cols.par_chunks_mut(g.k * g.k * b * n)
            .enumerate()
            .for_each(|(c, rows)| {
                for bi in 0..b {
                    let start = (bi * g.channels + c) * plane;
                    g.unfold_plane(&x[start..start + plane], bi, b, rows);
                }
            });
        let shape = Shape::from((g.channels * g.k * g.k, b * n));
        Ok((CpuStorage::F32(cols), shape))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            grad_res.contiguous()?.apply_op1_no_bwd(&Col2Im(self.0))?,
        ))
    }
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "col2im"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let cols = contiguous_f32(storage, layout, "col2im")?;
        let (h_out, w_out) = g.out_hw();
        let b = layout.dims()[1] / (h_out * w_out);
        let img_len = g.channels * g.h * g.w;
        let mut image = vec![0f32; b * img_len];
        image
            .par_chunks_mut(img_len)
            .enumerate()
            .for_each(|(bi, dst)| g.fold(cols, bi, b, dst));
        Ok((
            CpuStorage::F32(image),
            Shape::from((b, g.channels, g.h, g.w)),
        ))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            grad_res.contiguous()?.apply_op1_no_bwd(&Im2Col(self.0))?,
        ))
    }
}

/// Whether [`conv2d_im2col`] handles this input (f32 on the CPU).
pub fn im2col_applies(xs: &Tensor) -> bool {
    xs.device().is_cpu() && xs.dtype() == DType::F32
}

/// `conv2d(xs, weight) + bias` as im2col + GEMM; `xs: (b, c, h, w)`, `weight: (o, c, k, k)`,
/// `bias: (o,)`. Values and gradients equal candle's `conv2d` up to f32 summation order.
pub fn conv2d_im2col(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    pad: usize,
) -> Result<Tensor> {
    let (b, c, h, w) = xs.dims4()?;
    let (o, _, k, _) = weight.dims4()?;
    let g = PatchGeometry {
        channels: c,
        h,
        w,
        k,
        stride,
        pad,
    };
    let (h_out, w_out) = g.out_hw();
    // (c·k·k, b·h_out·w_out)
    let cols = xs.contiguous()?.apply_op1(Im2Col(g))?;
    // (o, c·k·k) · (c·k·k, b·n) + bias → (o, b·n)
    let ys = weight.reshape((o, c * k * k))?.matmul(&cols)?;
    let ys = ys.broadcast_add(&bias.reshape((o, 1))?)?;
    // (o, b, h_out, w_out) → (b, o, h_out, w_out)
    ys.reshape((o, b, h_out, w_out))?
        .transpose(0, 1)?
        .contiguous()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SeededRng;
    use candle_core::{Device, Var};

    /// Values and all three gradients of the im2col path against candle's direct conv.
    #[test]
    fn matches_candle_conv2d_values_and_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = SeededRng::new(9);
        // (channels in, out, kernel, stride, pad, h, w)
        for (c, o, k, s, p, h, w) in [
            (3, 5, 3, 1, 1, 7, 6),
            (4, 2, 3, 2, 1, 8, 8),
            (2, 3, 3, 2, 0, 9, 7),
            (6, 4, 1, 1, 0, 5, 5),
            (3, 4, 5, 1, 2, 6, 6),
        ] {
            let x = Var::from_tensor(&rng.normal((2, c, h, w), 0.0, 1.0, DType::F32, &dev)?)?;
            let wt = Var::from_tensor(&rng.normal((o, c, k, k), 0.0, 0.5, DType::F32, &dev)?)?;
            let bias = Var::from_tensor(&rng.normal(o, 0.0, 0.5, DType::F32, &dev)?)?;
            let fast = conv2d_im2col(x.as_tensor(), wt.as_tensor(), bias.as_tensor(), s, p)?;
            let plain = x
                .as_tensor()
                .conv2d(wt.as_tensor(), p, s, 1, 1)?
                .broadcast_add(&bias.as_tensor().reshape((1, o, 1, 1))?)?;
            let max_diff = |a: &Tensor, b: &Tensor| -> Result<f32> {
                (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
            };
            assert_eq!(fast.dims(), plain.dims());
            assert!(
                max_diff(&fast, &plain)? < 1e-5,
                "values, case k{k} s{s} p{p}"
            );
            let probe = rng.normal(plain.dims(), 0.0, 1.0, DType::F32, &dev)?;
            let g_fast = (fast * &probe)?.sum_all()?.backward()?;
            let g_plain = (plain * &probe)?.sum_all()?.backward()?;
            for (name, var) in [("input", &x), ("weight", &wt), ("bias", &bias)] {
                let (a, b) = (g_fast.get(var), g_plain.get(var));
                let (Some(a), Some(b)) = (a, b) else {
                    panic!("{name} gradient missing, case k{k} s{s} p{p}");
                };
                assert!(
                    max_diff(a, b)? < 1e-4,
                    "{name} gradient, case k{k} s{s} p{p}"
                );
            }
        }
        Ok(())
    }
}
