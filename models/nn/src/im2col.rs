//! Convolution as im2col + GEMM on the CPU: one op with its own backward pass.
//!
//! candle 0.11's CPU `conv2d` is 10–20× slower than PyTorch's oneDNN, and its backward is worse
//! (the input gradient is a direct `conv_transpose2d`). Here [`Conv2dIm2Col`] computes, image by
//! image, `Y_i = W·cols(x_i) + bias` straight into `(o, h_out·w_out)` (NCHW), where `cols`
//! unfolds every k×k patch into a column of a per-task scratch buffer that stays in cache.
//! Backward unfolds again instead of keeping the columns: `dx_i = fold(Wᵀ·dY_i)`,
//! `dW = Σ_i dY_i·cols(x_i)ᵀ`, `db = Σ dY`. Per-image partial sums are added in image order, so
//! results are bit-identical for any number of threads, and the only tensors the autograd graph
//! sees are x, W, b and Y (no column matrix, transpose or broadcast bias of full size).

use crate::cpu_slice::{TensorSlice, grad_tensor, storage_slice};
use crate::gemm::{View, gemm, transpose};
use crate::group_norm_fused::{GroupNormAct, NormPartials, sum_partials};
use crate::kept::Kept;
use crate::vmath::lane_sum;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
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

/// For a stride-1 convolution as large as its input ("same" padding), kernel offset
/// `(ki, kj)` reads the input plane shifted by `(dy, dx) = (ki − p, kj − p)`: flat output
/// position `i` reads input position `i + dy·w + dx`, except in the rows that fall off the top
/// or bottom and in the `|dx|` columns at one edge of every row, which read padding. So one
/// column-matrix row is one flat copy plus a few zeros, instead of a copy per image row.
#[derive(Debug, Clone, Copy)]
struct SameShift {
    w: usize,
    n: usize,
    dy: isize,
    dx: isize,
}

impl SameShift {
    /// Flat offset from output to input position.
    fn offset(&self) -> isize {
        self.dy * self.w as isize + self.dx
    }

    /// The output positions `[lo, hi)` whose rows read inside the input.
    fn rows_span(&self) -> (usize, usize) {
        let h = (self.n / self.w) as isize;
        let first = (-self.dy).clamp(0, h);
        let last = (h - self.dy).clamp(first, h);
        (first as usize * self.w, last as usize * self.w)
    }

    /// The part `[a, b)` of `[lo, hi)` whose shifted position lies inside a plane of `len`
    /// values (the positions cut off are edge columns).
    fn copy_span(&self, (lo, hi): (usize, usize), len: usize) -> (usize, usize) {
        let off = self.offset();
        let a = (lo as isize).max(-off).min(hi as isize);
        let b = (hi as isize).min(len as isize - off).max(a);
        (a as usize, b as usize)
    }

    /// Calls `f` on every output position in `[lo, hi)` whose column reads padding.
    fn edge_columns(&self, (lo, hi): (usize, usize), mut f: impl FnMut(usize)) {
        let w = self.w;
        let cols = if self.dx < 0 {
            0..(-self.dx) as usize
        } else {
            w - self.dx as usize..w
        };
        for row in (lo..hi).step_by(w) {
            cols.clone().for_each(|c| f(row + c));
        }
    }
}

impl PatchGeometry {
    /// Output height and width.
    pub fn out_hw(&self) -> (usize, usize) {
        (
            (self.h + 2 * self.pad - self.k) / self.stride + 1,
            (self.w + 2 * self.pad - self.k) / self.stride + 1,
        )
    }

    /// The flat shift of kernel offset `(ki, kj)`, for a stride-1 convolution as large as its
    /// input.
    fn same_shift(&self, ki: usize, kj: usize) -> Option<SameShift> {
        let same = self.stride == 1 && self.out_hw() == (self.h, self.w) && self.pad < self.w;
        (same && self.w > 0).then(|| SameShift {
            w: self.w,
            n: self.h * self.w,
            dy: ki as isize - self.pad as isize,
            dx: kj as isize - self.pad as isize,
        })
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

    /// Unfolds one channel plane (`h × w`) into that channel's `k·k` rows of the column
    /// matrix, `rows` (`(k·k, h_out·w_out)`).
    fn unfold_plane(&self, plane: &[f32], rows: &mut [f32]) {
        let (h_out, w_out) = self.out_hw();
        let (k, s, p) = (self.k, self.stride, self.pad);
        let n = h_out * w_out;
        for (ki, kj) in (0..k).flat_map(|ki| (0..k).map(move |kj| (ki, kj))) {
            let row = (ki * k + kj) * n;
            if let Some(shift) = self.same_shift(ki, kj) {
                let dst = &mut rows[row..row + n];
                let span = shift.rows_span();
                dst[..span.0].fill(0.0);
                dst[span.1..].fill(0.0);
                let (a, b) = shift.copy_span(span, plane.len());
                let off = shift.offset();
                let src = (a as isize + off) as usize..(b as isize + off) as usize;
                dst[a..b].copy_from_slice(&plane[src]);
                shift.edge_columns(span, |i| dst[i] = 0.0);
                continue;
            }
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

    /// Adds one image's columns (`(c·k·k, h_out·w_out)`) into its `(c, h, w)`, which the caller
    /// zeroes first (the adjoint of unfolding). The columns that read padding
    /// are zeroed on the way (`cols` is the caller's scratch).
    fn fold(&self, cols: &mut [f32], image: &mut [f32]) {
        let (h_out, w_out) = self.out_hw();
        let (k, s, p) = (self.k, self.stride, self.pad);
        let n = h_out * w_out;
        for c in 0..self.channels {
            let plane = &mut image[c * self.h * self.w..(c + 1) * self.h * self.w];
            for ki in 0..k {
                for kj in 0..k {
                    let row = ((c * k + ki) * k + kj) * n;
                    if let Some(shift) = self.same_shift(ki, kj) {
                        let src = &mut cols[row..row + n];
                        let span = shift.rows_span();
                        shift.edge_columns(span, |i| src[i] = 0.0);
                        let (a, b) = shift.copy_span(span, plane.len());
                        let off = shift.offset();
                        let dst =
                            &mut plane[(a as isize + off) as usize..(b as isize + off) as usize];
                        dst.iter_mut().zip(&src[a..b]).for_each(|(d, v)| *d += v);
                        continue;
                    }
                    let (lo, hi) = self.valid_cols(kj, w_out);
                    for oh in 0..h_out {
                        let ih = (oh * s + ki) as isize - p as isize;
                        if ih < 0 || ih >= self.h as isize {
                            continue;
                        }
                        let src = &cols[row + oh * w_out..row + (oh + 1) * w_out];
                        let dst = &mut plane[ih as usize * self.w..(ih as usize + 1) * self.w];
                        if s == 1 {
                            let iw0 = lo + kj - p;
                            let dst = &mut dst[iw0..iw0 + (hi - lo)];
                            dst.iter_mut().zip(&src[lo..hi]).for_each(|(d, v)| *d += v);
                        } else {
                            for ow in lo..hi {
                                dst[ow * s + kj - p] += src[ow];
                            }
                        }
                    }
                }
            }
        }
    }
}

impl PatchGeometry {
    /// Output positions per channel, `h_out·w_out`.
    fn positions(&self) -> usize {
        let (h_out, w_out) = self.out_hw();
        h_out * w_out
    }

    /// Rows of the column matrix, `c·k·k`.
    fn patch_len(&self) -> usize {
        self.channels * self.k * self.k
    }

    /// A 1×1, stride-1, unpadded kernel: the image already is its column matrix.
    fn is_pointwise(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == 0
    }

    /// Unfolds one `(c, h, w)` image into `cols` (`(c·k·k, h_out·w_out)`).
    fn unfold_image(&self, image: &[f32], cols: &mut [f32]) {
        let plane = self.h * self.w;
        let rows = self.k * self.k * self.positions();
        for (c, rows) in cols.chunks_mut(rows).enumerate() {
            self.unfold_plane(&image[c * plane..(c + 1) * plane], rows);
        }
    }

    /// One image's column matrix: the image itself for a pointwise kernel, else unfolded into
    /// `scratch`.
    fn columns<'a>(&self, image: &'a [f32], scratch: &'a mut Vec<f32>) -> &'a [f32] {
        if self.is_pointwise() {
            return image;
        }
        scratch.resize(self.patch_len() * self.positions(), 0.0);
        self.unfold_image(image, scratch);
        scratch
    }
}

thread_local! {
    /// Each thread's im2col column buffer for the forward, kept between calls: at SD-1.5's
    /// sizes one image's columns exceed glibc's largest mmap threshold (32 MiB), so a fresh
    /// buffer per call was mapped and page-faulted in anew each time (17% of a UNet call).
    /// Unfolding writes every element, padding included, so reuse cannot leak old values.
    static COLUMNS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's forward column buffer.
fn with_columns_scratch<R>(f: impl FnOnce(&mut Vec<f32>) -> R) -> R {
    COLUMNS.with(|cell| {
        let mut scratch = cell.take();
        let out = f(&mut scratch);
        cell.replace(scratch);
        out
    })
}

/// One image's contributions `(dW_i, db_i, (dγ_i, dβ_i))` to the kernel, bias and norm
/// parameter gradients, when wanted.
type ImagePartials = (Option<Vec<f32>>, Option<Vec<f32>>, Option<NormPartials>);

/// `conv2d(x, W) + b` for `x: (b, c, h, w)`, `W: (o, c, k, k)` (f32, CPU, contiguous operands),
/// with backward to every operand.
///
/// Without `norm` the third operand is the bias, `(o,)` or one per image `(b, o)`. With `norm`
/// the convolution reads `act(group_norm(x))` instead of `x`, computed image by image and never
/// a tensor of the autograd graph (kept inside the op for backward when a gradient will be
/// taken and it fits in 64 MiB, recomputed otherwise), and the third operand packs
/// `[γ (c), β (c), bias (o or b·o)]` into one vector: a ResNet block's norm–SiLU–conv as one op.
#[derive(Debug)]
pub struct Conv2dIm2Col {
    geometry: PatchGeometry,
    norm: Option<GroupNormAct>,
    /// The norm–activation of every image, when kept.
    kept: Kept<Vec<f32>>,
}

/// Operand sizes: `(batch, out channels, bias per image)`.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    batch: usize,
    out: usize,
    bias_per_image: bool,
}

impl Conv2dIm2Col {
    /// The op for `geometry`, reading `act(group_norm(x))` when `norm` is given; `keep` keeps
    /// that activation for backward (set it when a gradient will be taken).
    pub fn new(geometry: PatchGeometry, norm: Option<GroupNormAct>, keep: bool) -> Self {
        Self {
            geometry,
            norm,
            kept: Kept::new("conv2d", keep && norm.is_some()),
        }
    }

    /// Checks the operands against the geometry (and the packed norm parameters).
    fn sizes(&self, x: &[usize], w: &[usize], third: &[usize]) -> Result<Sizes> {
        let g = self.geometry;
        if let ([n, c, h, wd], [o, wc, k1, k2]) = (x, w)
            && (*c, *h, *wd) == (g.channels, g.h, g.w)
            && (*wc, *k1, *k2) == (g.channels, g.k, g.k)
        {
            let sizes = |bias_per_image| Sizes {
                batch: *n,
                out: *o,
                bias_per_image,
            };
            match (self.norm, third) {
                (None, [bo]) if bo == o => return Ok(sizes(false)),
                (None, [bn, bo]) if (bn, bo) == (n, o) => return Ok(sizes(true)),
                (Some(norm), [len]) if norm.groups > 0 && c % norm.groups == 0 => {
                    if *len == 2 * c + o {
                        return Ok(sizes(false));
                    }
                    if *len == 2 * c + n * o {
                        return Ok(sizes(true));
                    }
                }
                _ => {}
            }
        }
        candle_core::bail!(
            "conv2d: input {x:?}, weight {w:?}, bias/parameters {third:?} do not fit {g:?} (norm {:?})",
            self.norm
        )
    }

    /// `(γ, β, bias)` out of the third operand.
    fn split_params<'a>(&self, third: &'a [f32]) -> (&'a [f32], &'a [f32], &'a [f32]) {
        let c = self.geometry.channels;
        match self.norm {
            Some(_) => (&third[..c], &third[c..2 * c], &third[2 * c..]),
            None => (&[], &[], third),
        }
    }

    /// The convolution's input for image `x_i`: `x_i` itself, or its norm–activation computed
    /// into `act`.
    fn input<'a>(
        &self,
        x_i: &'a [f32],
        (gamma, beta): (&[f32], &[f32]),
        act: &'a mut Vec<f32>,
    ) -> &'a [f32] {
        match self.norm {
            Some(norm) => {
                act.resize(x_i.len(), 0.0);
                norm.forward_sample(x_i, gamma, beta, act);
                act
            }
            None => x_i,
        }
    }
}

impl CustomOp3 for Conv2dIm2Col {
    fn name(&self) -> &'static str {
        "conv2d-im2col"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        ts: &CpuStorage,
        tl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.geometry;
        let Sizes {
            batch,
            out: o,
            bias_per_image,
        } = self.sizes(xl.dims(), wl.dims(), tl.dims())?;
        let x = storage_slice(xs, xl, "conv2d: input")?;
        let w = storage_slice(ws, wl, "conv2d: weight")?;
        let (gamma, beta, bias) = self.split_params(storage_slice(ts, tl, "conv2d: bias")?);
        let (n, kk) = (g.positions(), g.patch_len());
        let image = g.channels * g.h * g.w;
        // every output row starts as its bias (written once, no zero fill first)
        let bias_of = |i: usize| {
            if bias_per_image {
                &bias[i * o..(i + 1) * o]
            } else {
                bias
            }
        };
        let mut out: Vec<f32> = Vec::with_capacity(batch * o * n);
        for i in 0..batch {
            for &b in bias_of(i) {
                out.resize(out.len() + n, b);
            }
        }
        let conv = |y: &mut [f32], input: &[f32], scratch: &mut Vec<f32>| {
            let cols = g.columns(input, scratch);
            let (yv, wv) = (View::rows(0, o, n, n), View::rows(0, o, kk, kk));
            gemm((y, yv), (w, wv), (cols, View::rows(0, kk, n, n)), 1.0, true);
        };
        let keep = self.kept.wants(batch * image);
        if n > 0 && image > 0 && keep {
            let mut acts = vec![0f32; batch * image];
            out.par_chunks_mut(o * n)
                .zip(acts.par_chunks_mut(image))
                .enumerate()
                .for_each(|(i, (y, act))| {
                    if let Some(norm) = self.norm {
                        norm.forward_sample(&x[i * image..(i + 1) * image], gamma, beta, act);
                    }
                    with_columns_scratch(|scratch| conv(y, act, scratch));
                });
            self.kept.store(acts)?;
        } else if n > 0 {
            out.par_chunks_mut(o * n)
                .enumerate()
                .for_each_init(Vec::new, |act, (i, y)| {
                    let input = self.input(&x[i * image..(i + 1) * image], (gamma, beta), act);
                    with_columns_scratch(|scratch| conv(y, input, scratch));
                });
        }
        let (h_out, w_out) = g.out_hw();
        Ok((CpuStorage::F32(out), Shape::from((batch, o, h_out, w_out))))
    }

    fn bwd(
        &self,
        xs: &Tensor,
        weight: &Tensor,
        third: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = self.geometry;
        let Sizes {
            batch,
            out: o,
            bias_per_image,
        } = self.sizes(xs.dims(), weight.dims(), third.dims())?;
        let grad = grad.contiguous()?;
        let (xt, wt, tt, gt) = (
            TensorSlice::new(xs, "conv2d: input"),
            TensorSlice::new(weight, "conv2d: weight"),
            TensorSlice::new(third, "conv2d: bias"),
            TensorSlice::new(&grad, "conv2d: output gradient"),
        );
        let (x, w, dy) = (xt.get()?, wt.get()?, gt.get()?);
        let (gamma, beta, _) = self.split_params(tt.get()?);
        let (n, kk) = (g.positions(), g.patch_len());
        let image = g.channels * g.h * g.w;
        let (yv, wv, cv) = (
            View::rows(0, o, n, n),
            View::rows(0, o, kk, kk),
            View::rows(0, kk, n, n),
        );
        let dw_t_view = View::rows(0, kk, o, o).t();
        let (want_dx, want_dw, want_third) = (xs.track_op(), weight.track_op(), third.track_op());
        // the norm's parameters need the gradient reaching its output, even for a frozen input
        let want_dinput = want_dx || (want_third && self.norm.is_some());
        let mut dx = vec![0f32; if want_dx { x.len() } else { 0 }];
        // per image: dx_i (through fold(Wᵀ·dY_i) and the norm's backward), and the partial
        // sums dW_i = dY_i·cols_iᵀ, db_i = Σ dY_i and (dγ_i, dβ_i), each only when wanted
        let kept_guard = self.kept.get()?;
        let kept_acts: Option<&[f32]> = kept_guard.as_deref();
        let image_grads = |(act, scratch, dinput): &mut (Vec<f32>, Vec<f32>, Vec<f32>),
                           i: usize,
                           dx_i: &mut [f32]|
         -> ImagePartials {
            let (x_i, dy_i) = (
                &x[i * image..(i + 1) * image],
                &dy[i * o * n..(i + 1) * o * n],
            );
            let input = match kept_acts {
                Some(acts) => &acts[i * image..(i + 1) * image],
                None => self.input(x_i, (gamma, beta), act),
            };
            // dW_i written transposed, `(kk, o)`: the same bits, but the GEMM then reads the
            // columns in place instead of packing them (1.1-1.5x faster at these shapes)
            let dw_t = want_dw.then(|| {
                let mut dw_t = vec![0f32; o * kk];
                let cols = g.columns(input, scratch);
                gemm(
                    (&mut dw_t, dw_t_view),
                    (dy_i, yv),
                    (cols, cv.t()),
                    1.0,
                    false,
                );
                dw_t
            });
            let db: Option<Vec<f32>> =
                want_third.then(|| dy_i.chunks(n.max(1)).map(lane_sum).collect());
            let mut dnorm = None;
            if want_dinput && image > 0 {
                // the gradient at the convolution's input: straight into dx_i without a norm
                let target: &mut [f32] = match self.norm {
                    Some(_) => {
                        dinput.clear();
                        dinput.resize(image, 0.0);
                        dinput
                    }
                    None => dx_i,
                };
                if g.is_pointwise() {
                    gemm((target, cv), (w, wv.t()), (dy_i, yv), 1.0, false);
                } else {
                    scratch.resize(kk * n, 0.0);
                    gemm((scratch, cv), (w, wv.t()), (dy_i, yv), 1.0, false);
                    g.fold(scratch, target);
                }
                if let Some(norm) = self.norm {
                    // a frozen input gets no dx, but the norm's backward works in one: the
                    // im2col scratch, free again by now
                    let dx_i = if dx_i.is_empty() {
                        scratch.resize(scratch.len().max(image), 0.0);
                        &mut scratch[..image]
                    } else {
                        dx_i
                    };
                    dnorm = Some(norm.backward_sample(x_i, (gamma, beta), dinput, dx_i));
                }
            }
            (dw_t, db, dnorm)
        };
        let partials: Vec<ImagePartials> = if want_dx && image > 0 {
            dx.par_chunks_mut(image)
                .enumerate()
                .map_init(
                    || (Vec::new(), Vec::new(), Vec::new()),
                    |scratch, (i, dx_i)| image_grads(scratch, i, dx_i),
                )
                .collect()
        } else {
            (0..batch)
                .into_par_iter()
                .map_init(
                    || (Vec::new(), Vec::new(), Vec::new()),
                    |scratch, i| image_grads(scratch, i, &mut []),
                )
                .collect()
        };
        let sum_in_order = |pick: fn(&ImagePartials) -> Option<&Vec<f32>>, len: usize| {
            let mut total = vec![0f32; len];
            for part in partials.iter().filter_map(pick) {
                total.iter_mut().zip(part).for_each(|(a, b)| *a += b);
            }
            total
        };
        let dw = want_dw.then(|| transpose(&sum_in_order(|p| p.0.as_ref(), o * kk), kk, o));
        let dthird = want_third.then(|| {
            let db: Vec<f32> = if bias_per_image {
                partials
                    .iter()
                    .filter_map(|p| p.1.as_ref())
                    .flatten()
                    .copied()
                    .collect()
            } else {
                sum_in_order(|p| p.1.as_ref(), o)
            };
            match self.norm {
                Some(_) => {
                    let norms: Vec<_> = partials.iter().filter_map(|p| p.2.clone()).collect();
                    let (dgamma, dbeta) = sum_partials(&norms, g.channels);
                    [dgamma, dbeta, db].concat()
                }
                None => db,
            }
        });
        Ok((
            grad_tensor(want_dx.then_some(dx), xs)?,
            grad_tensor(dw, weight)?,
            grad_tensor(dthird, third)?,
        ))
    }
}

/// The geometry of `weight` over `xs` with this stride and padding.
fn geometry(xs: &Tensor, weight: &Tensor, stride: usize, pad: usize) -> Result<PatchGeometry> {
    let (_, c, h, w) = xs.dims4()?;
    let (_, _, k, _) = weight.dims4()?;
    Ok(PatchGeometry {
        channels: c,
        h,
        w,
        k,
        stride,
        pad,
    })
}

/// `conv2d(xs, weight) + bias` as im2col + GEMM; `xs: (b, c, h, w)`, `weight: (o, c, k, k)`,
/// `bias: (o,)` or `(b, o)` (a bias per image). Values and gradients equal candle's `conv2d`
/// up to f32 summation order.
pub fn conv2d_im2col(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    pad: usize,
) -> Result<Tensor> {
    let op = Conv2dIm2Col::new(geometry(xs, weight, stride, pad)?, None, false);
    xs.contiguous()?
        .apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)
}

/// `conv2d(act(group_norm(xs)·γ + β), weight) + bias` as one op (see [`Conv2dIm2Col`]): the
/// normalised activation is never stored. `gamma`, `beta`: `(c,)`; `bias`: `(o,)` or `(b, o)`.
pub fn norm_act_conv2d_im2col(
    xs: &Tensor,
    (norm, gamma, beta): (GroupNormAct, &Tensor, &Tensor),
    (weight, bias): (&Tensor, &Tensor),
    stride: usize,
    pad: usize,
) -> Result<Tensor> {
    let params = Tensor::cat(&[gamma, beta, &bias.flatten_all()?], 0)?;
    let keep = [xs, weight, &params].iter().any(|t| t.track_op());
    let op = Conv2dIm2Col::new(geometry(xs, weight, stride, pad)?, Some(norm), keep);
    xs.contiguous()?
        .apply_op3(&weight.contiguous()?, &params, op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SeededRng;
    use crate::test_support::output_and_grads;
    use candle_core::{DType, Device, Var};

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
            (2, 3, 3, 1, 1, 3, 2),
            (1, 2, 5, 1, 2, 4, 3),
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

    /// A frozen kernel and bias get no gradient; the input's is unchanged, and every result is
    /// bit-identical whether rayon has one thread or three.
    #[test]
    fn frozen_weights_skip_their_gradient_and_threads_do_not_change_bits() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = SeededRng::new(10);
        let x = Var::from_tensor(&rng.normal((5, 3, 6, 6), 0.0, 1.0, DType::F32, &dev)?)?;
        let wt = Var::from_tensor(&rng.normal((4, 3, 3, 3), 0.0, 0.5, DType::F32, &dev)?)?;
        let bias = Var::from_tensor(&rng.normal(4, 0.0, 0.5, DType::F32, &dev)?)?;
        let frozen_w = wt.as_tensor().detach();
        let frozen_b = bias.as_tensor().detach();
        let run = |threads: usize, w: &Tensor, b: &Tensor| -> Result<Vec<Option<Vec<f32>>>> {
            crate::threads::install(threads, || {
                let y = conv2d_im2col(x.as_tensor(), w, b, 2, 1)?;
                let grads = y.sqr()?.sum_all()?.backward()?;
                let flat =
                    |t: Option<&Tensor>| t.map(|t| t.flatten_all()?.to_vec1::<f32>()).transpose();
                Ok(vec![
                    Some(y.flatten_all()?.to_vec1::<f32>()?),
                    flat(grads.get(&x))?,
                    flat(grads.get(w))?,
                    flat(grads.get(b))?,
                ])
            })?
        };
        let trained = run(1, wt.as_tensor(), bias.as_tensor())?;
        assert_eq!(trained, run(3, wt.as_tensor(), bias.as_tensor())?);
        assert!(trained.iter().all(Option::is_some));
        let frozen = run(2, &frozen_w, &frozen_b)?;
        assert_eq!(frozen[..2], trained[..2]);
        assert_eq!(frozen[2..], [None, None]);
        Ok(())
    }

    /// A bias per image (a ResNet block's time embedding folded in) matches candle's conv plus
    /// a broadcast add, in values and in the gradient of every operand.
    #[test]
    fn a_bias_per_image_matches_conv_plus_broadcast_add() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = SeededRng::new(12);
        let x = Var::from_tensor(&rng.normal((3, 2, 5, 5), 0.0, 1.0, DType::F32, &dev)?)?;
        let wt = Var::from_tensor(&rng.normal((4, 2, 3, 3), 0.0, 0.5, DType::F32, &dev)?)?;
        let bias = Var::from_tensor(&rng.normal((3, 4), 0.0, 0.5, DType::F32, &dev)?)?;
        let fast = conv2d_im2col(x.as_tensor(), wt.as_tensor(), bias.as_tensor(), 1, 1)?;
        let plain = x
            .as_tensor()
            .conv2d(wt.as_tensor(), 1, 1, 1, 1)?
            .broadcast_add(&bias.as_tensor().unsqueeze(2)?.unsqueeze(3)?)?;
        let max_diff = |a: &Tensor, b: &Tensor| -> Result<f32> {
            (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
        };
        assert!(max_diff(&fast, &plain)? < 1e-5);
        let probe = rng.normal(plain.dims(), 0.0, 1.0, DType::F32, &dev)?;
        let g_fast = (fast * &probe)?.sum_all()?.backward()?;
        let g_plain = (plain * &probe)?.sum_all()?.backward()?;
        for (name, var) in [("input", &x), ("weight", &wt), ("bias", &bias)] {
            let (Some(a), Some(b)) = (g_fast.get(var), g_plain.get(var)) else {
                panic!("{name} gradient missing");
            };
            assert_eq!(a.dims(), b.dims());
            assert!(max_diff(a, b)? < 1e-4, "{name} gradient");
        }
        assert!(
            conv2d_im2col(
                x.as_tensor(),
                wt.as_tensor(),
                &Tensor::zeros((2, 4), DType::F32, &dev)?,
                1,
                1
            )
            .is_err()
        );
        Ok(())
    }

    /// GroupNorm–SiLU–conv as one op equals the fused GroupNorm followed by the fused conv, in
    /// values and in the gradient of every operand, with a shared or a per-image bias, and
    /// when the input itself is frozen (the norm's parameters still learn).
    #[test]
    fn norm_act_conv_matches_norm_then_conv() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = SeededRng::new(14);
        let x = Var::from_tensor(&rng.normal((3, 4, 6, 6), 0.5, 2.0, DType::F32, &dev)?)?;
        let gamma = Var::from_tensor(&rng.normal(4, 1.0, 0.3, DType::F32, &dev)?)?;
        let beta = Var::from_tensor(&rng.normal(4, 0.0, 0.3, DType::F32, &dev)?)?;
        let wt = Var::from_tensor(&rng.normal((5, 4, 3, 3), 0.0, 0.3, DType::F32, &dev)?)?;
        let shared = Var::from_tensor(&rng.normal(5, 0.0, 0.3, DType::F32, &dev)?)?;
        let per_image = Var::from_tensor(&rng.normal((3, 5), 0.0, 0.3, DType::F32, &dev)?)?;
        let norm = GroupNormAct {
            groups: 2,
            eps: 1e-5,
            silu: true,
        };
        let max_diff = |a: &Tensor, b: &Tensor| -> Result<f32> {
            (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
        };
        let frozen_x = x.as_tensor().detach();
        for (input, bias) in [
            (x.as_tensor(), &shared),
            (x.as_tensor(), &per_image),
            (&frozen_x, &shared),
        ] {
            let fused = norm_act_conv2d_im2col(
                input,
                (norm, gamma.as_tensor(), beta.as_tensor()),
                (wt.as_tensor(), bias.as_tensor()),
                1,
                1,
            )?;
            let normed = input.apply_op3(gamma.as_tensor(), beta.as_tensor(), norm)?;
            let plain = conv2d_im2col(&normed, wt.as_tensor(), bias.as_tensor(), 1, 1)?;
            assert!(max_diff(&fused, &plain)? < 1e-5, "values");
            let probe = rng.normal(plain.dims(), 0.0, 1.0, DType::F32, &dev)?;
            let g_fused = (fused * &probe)?.sum_all()?.backward()?;
            let g_plain = (plain * &probe)?.sum_all()?.backward()?;
            for (name, var) in [
                ("gamma", &gamma),
                ("beta", &beta),
                ("weight", &wt),
                ("bias", bias),
            ] {
                let (Some(a), Some(b)) = (g_fused.get(var), g_plain.get(var)) else {
                    panic!("{name} gradient missing");
                };
                assert!(max_diff(a, b)? < 1e-4, "{name} gradient");
            }
            match (g_fused.get(input), g_plain.get(input)) {
                (Some(a), Some(b)) => assert!(max_diff(a, b)? < 1e-4, "input gradient"),
                // a frozen input gets none (the plain GroupNorm computes one regardless)
                (None, _) => assert!(!input.track_op()),
                (Some(_), None) => panic!("input gradient only from the fused op"),
            }
        }
        Ok(())
    }

    /// The norm–activation kept from forward gives the same bits as recomputing it.
    #[test]
    fn kept_and_recomputed_activation_give_identical_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = SeededRng::new(15);
        let x = Var::from_tensor(&rng.normal((2, 4, 5, 5), 0.0, 1.5, DType::F32, &dev)?)?;
        let wt = Var::from_tensor(&rng.normal((3, 4, 3, 3), 0.0, 0.3, DType::F32, &dev)?)?;
        let params = Var::from_tensor(&rng.normal(2 * 4 + 3, 0.5, 0.3, DType::F32, &dev)?)?;
        let norm = GroupNormAct {
            groups: 2,
            eps: 1e-5,
            silu: true,
        };
        let g = geometry(x.as_tensor(), wt.as_tensor(), 1, 1)?;
        let run = |keep: bool| -> Result<Vec<Vec<f32>>> {
            let y = x.apply_op3(&wt, &params, Conv2dIm2Col::new(g, Some(norm), keep))?;
            output_and_grads(&y, &[&x, &wt, &params])
        };
        assert_eq!(run(true)?, run(false)?);
        Ok(())
    }
}
