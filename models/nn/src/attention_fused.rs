//! Multi-head attention `softmax(q·kᵀ·scale)·v` as one CPU op with an analytic backward.
//!
//! Composed from candle ops, attention materialises the `(b·heads, n, m)` scores several times
//! over (the product, its scaling, the softmax, and in backward the gradient of each, every one
//! summed into a fresh zero tensor), and splitting and merging heads copies q, k, v and the
//! output. Here each (image, head) is two GEMMs over strided views of the `(b, n, heads·d)`
//! projections around an `n × m` score block that stays in cache. Forward keeps the softmax
//! output for backward when a gradient will be taken and it fits in 64 MiB; otherwise backward
//! recomputes it (as flash attention does). Backward writes dq, dk and dv straight into
//! projection layout:
//! `dv = Pᵀ·do`, `dP = do·vᵀ`, `dS = P∘(dP − rowsum(dP∘P))·scale`, `dq = dS·k`, `dk = dSᵀ·q`.

use crate::cpu_slice::{TensorSlice, storage_slice};
use crate::gemm::{View, gemm};
use crate::kept::Kept;
use crate::vmath::{softmax_backward_row, softmax_row};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Attention over `q: (b, n, heads·d)`, `k, v: (b, m, heads·d)`, returning `(b, n, heads·d)`
/// (f32, CPU, contiguous operands).
#[derive(Debug)]
pub struct FusedAttention {
    heads: usize,
    scale: f32,
    /// Query `r` attends to keys `0..=r` only (self-attention, `n = m`).
    causal: bool,
    /// The forward pass's probabilities, `(heads, n, m)` per image, when kept.
    probs: Kept<Vec<Vec<f32>>>,
}

/// Sizes shared by the forward and backward kernels.
#[derive(Debug, Clone, Copy)]
struct Dims {
    n: usize,
    m: usize,
    d: usize,
    inner: usize,
}

impl Dims {
    /// Head `h` of one image's `rows × inner` projection, as a `rows × d` view.
    fn head(&self, h: usize, rows: usize) -> View {
        View::rows(h * self.d, rows, self.d, self.inner)
    }

    /// The `n × m` score block.
    fn scores(&self) -> View {
        View::rows(0, self.n, self.m, self.m)
    }
}

impl FusedAttention {
    /// `heads` heads with scores scaled by `scale` (usually `1/√d`), causal (query `r` sees keys
    /// `0..=r`) or not; `keep_probs` keeps the softmax output for backward (set it when a
    /// gradient will be taken).
    pub fn new(heads: usize, scale: f32, causal: bool, keep_probs: bool) -> Self {
        Self {
            heads,
            scale,
            causal,
            probs: Kept::new("attention", keep_probs),
        }
    }

    fn dims(&self, q: &[usize], k: &[usize], v: &[usize]) -> Result<Dims> {
        let ([b, n, inner], [bk, m, ik], [bv, mv, iv]) = (q, k, v) else {
            candle_core::bail!("attention: q {q:?}, k {k:?}, v {v:?} must all be rank 3");
        };
        if (bk, bv, ik, iv, mv) != (b, b, inner, inner, m) || self.heads == 0 {
            candle_core::bail!(
                "attention: q {q:?}, k {k:?}, v {v:?} do not agree or do not split into {} heads",
                self.heads
            );
        }
        if self.causal && n != m {
            candle_core::bail!(
                "attention: causal attention needs as many keys as queries, got {n} and {m}"
            );
        }
        if inner % self.heads != 0 {
            candle_core::bail!(
                "attention: width {inner} does not split into {} heads",
                self.heads
            );
        }
        Ok(Dims {
            n: *n,
            m: *m,
            d: inner / self.heads,
            inner: *inner,
        })
    }

    /// `P = softmax(q_h·k_hᵀ·scale)` for head `h` of one image, into `p` (`n × m`).
    fn probs(&self, dims: Dims, h: usize, q: &[f32], k: &[f32], p: &mut [f32]) {
        gemm(
            (p, dims.scores()),
            (q, dims.head(h, dims.n)),
            (k, dims.head(h, dims.m).t()),
            self.scale,
            false,
        );
        for (r, row) in p.chunks_mut(dims.m).enumerate() {
            if self.causal {
                row[r + 1..].fill(f32::NEG_INFINITY);
            }
            softmax_row(row);
        }
    }

    /// Gradients `(dq, dk, dv)` of one image from its operands and output gradient `dout`;
    /// `kept` holds the image's `(heads, n, m)` probabilities when forward kept them.
    fn backward_image(
        &self,
        dims: Dims,
        (q, k, v, dout): (&[f32], &[f32], &[f32], &[f32]),
        kept: Option<&[f32]>,
        (dq, dk, dv): (&mut [f32], &mut [f32], &mut [f32]),
    ) {
        let block = dims.n * dims.m;
        let mut scratch = Vec::new();
        let mut dp = vec![0f32; block];
        for h in 0..self.heads {
            let (qh, kh) = (dims.head(h, dims.n), dims.head(h, dims.m));
            let p = match kept {
                Some(kept) => &kept[h * block..(h + 1) * block],
                None => {
                    scratch.resize(block, 0.0);
                    self.probs(dims, h, q, k, &mut scratch);
                    &scratch[..]
                }
            };
            gemm(
                (&mut dp, dims.scores()),
                (dout, qh),
                (v, kh.t()),
                1.0,
                false,
            );
            // the softmax backward streams the kept probabilities in row by row, so that the
            // product below finds them in cache (read cold by the GEMM, they cost twice as much)
            for (dp_row, p_row) in dp.chunks_mut(dims.m).zip(p.chunks(dims.m)) {
                softmax_backward_row(dp_row, p_row, self.scale);
            }
            gemm((dv, kh), (p, dims.scores().t()), (dout, qh), 1.0, false);
            gemm((dq, qh), (&dp, dims.scores()), (k, kh), 1.0, false);
            gemm((dk, kh), (&dp, dims.scores().t()), (q, qh), 1.0, false);
        }
    }
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = self.dims(ql.dims(), kl.dims(), vl.dims())?;
        let q = storage_slice(qs, ql, "attention: q")?;
        let k = storage_slice(ks, kl, "attention: k")?;
        let v = storage_slice(vs, vl, "attention: v")?;
        let (q_img, kv_img) = (dims.n * dims.inner, dims.m * dims.inner);
        let batch = q.len().checked_div(q_img).unwrap_or(0);
        let block = dims.n * dims.m;
        let keep = self.probs.wants(batch * self.heads * block);
        let mut out = vec![0f32; q.len()];
        // each head's scores are computed and normalised in a cache-sized scratch block, then
        // appended to the image's kept probabilities: one sequential write, no zero fill first
        let image = |p: &mut Vec<f32>, (i, out_img): (usize, &mut [f32])| -> Vec<f32> {
            let (q, kv) = (&q[i * q_img..][..q_img], i * kv_img..(i + 1) * kv_img);
            let mut kept = Vec::with_capacity(if keep { self.heads * block } else { 0 });
            for h in 0..self.heads {
                self.probs(dims, h, q, &k[kv.clone()], p);
                let (out_h, v_h) = (dims.head(h, dims.n), dims.head(h, dims.m));
                gemm(
                    (out_img, out_h),
                    (p, dims.scores()),
                    (&v[kv.clone()], v_h),
                    1.0,
                    false,
                );
                if keep {
                    kept.extend_from_slice(p);
                }
            }
            kept
        };
        let kept: Vec<Vec<f32>> = if q_img > 0 {
            out.par_chunks_mut(q_img)
                .enumerate()
                .map_init(|| vec![0f32; block], image)
                .collect()
        } else {
            Vec::new()
        };
        if keep {
            self.probs.store(kept)?;
        }
        Ok((CpuStorage::F32(out), ql.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dims = self.dims(q.dims(), k.dims(), v.dims())?;
        let grad = grad.contiguous()?;
        let (qt, kt, vt, gt) = (
            TensorSlice::new(q, "attention: q"),
            TensorSlice::new(k, "attention: k"),
            TensorSlice::new(v, "attention: v"),
            TensorSlice::new(&grad, "attention: output gradient"),
        );
        let (qa, ka, va, ga) = (qt.get()?, kt.get()?, vt.get()?, gt.get()?);
        let (q_img, kv_img) = (dims.n * dims.inner, dims.m * dims.inner);
        let mut dq = vec![0f32; qa.len()];
        let mut dk = vec![0f32; ka.len()];
        let mut dv = vec![0f32; va.len()];
        let kept = self.probs.get()?;
        if q_img > 0 && kv_img > 0 {
            dq.par_chunks_mut(q_img)
                .zip(dk.par_chunks_mut(kv_img).zip(dv.par_chunks_mut(kv_img)))
                .enumerate()
                .for_each(|(i, (dq, (dk, dv)))| {
                    let (qr, kvr) = (i * q_img..(i + 1) * q_img, i * kv_img..(i + 1) * kv_img);
                    let operands = (&qa[qr.clone()], &ka[kvr.clone()], &va[kvr], &ga[qr]);
                    let probs = kept.as_ref().map(|p| &p[i][..]);
                    self.backward_image(dims, operands, probs, (dq, dk, dv));
                });
        }
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), dev)?),
            Some(Tensor::from_vec(dk, k.shape(), dev)?),
            Some(Tensor::from_vec(dv, v.shape(), dev)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use crate::attention::{
        causal_multi_head_attention, composed_multi_head_attention, multi_head_attention,
    };
    use crate::rng::SeededRng;
    use crate::test_support::output_and_grads;
    use candle_core::{DType, Device, Result, Tensor, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
    }

    /// Fused and composed attention agree on values and on the gradients of q, k and v.
    fn agrees_with_composed(
        n: usize,
        m: usize,
        heads: usize,
        d: usize,
        causal: bool,
    ) -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = SeededRng::new(11);
        let mut var = |rows| {
            Var::from_tensor(&rng.normal((3, rows, heads * d), 0.0, 1.5, DType::F32, &dev)?)
        };
        let (q, k, v) = (var(n)?, var(m)?, var(m)?);
        let probe = SeededRng::new(12).normal((3, n, heads * d), 0.0, 1.0, DType::F32, &dev)?;
        let fused = if causal {
            causal_multi_head_attention(&q, &k, &v, heads)?
        } else {
            multi_head_attention(&q, &k, &v, heads)?
        };
        let plain = composed_multi_head_attention(&q, &k, &v, heads, causal)?;
        assert_eq!(fused.dims(), plain.dims());
        assert!(max_diff(&fused, &plain)? < 1e-5, "values differ");
        let g_fused = (fused * &probe)?.sum_all()?.backward()?;
        let g_plain = (plain * &probe)?.sum_all()?.backward()?;
        for (name, x) in [("q", &q), ("k", &k), ("v", &v)] {
            let (Some(a), Some(b)) = (g_fused.get(x), g_plain.get(x)) else {
                panic!("no gradient for {name}");
            };
            let scale = b.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(scale > 0.0, "{name}: zero reference gradient");
            assert!(
                max_diff(a, b)? < 1e-5 * scale.max(1.0),
                "{name}: gradients differ"
            );
        }
        Ok(())
    }

    #[test]
    fn self_attention_matches_the_composed_ops() -> Result<()> {
        agrees_with_composed(10, 10, 2, 4, false)
    }

    #[test]
    fn cross_attention_with_more_heads_matches_the_composed_ops() -> Result<()> {
        agrees_with_composed(7, 3, 4, 5, false)
    }

    #[test]
    fn causal_self_attention_matches_the_masked_composed_ops() -> Result<()> {
        agrees_with_composed(9, 9, 3, 4, true)
    }

    #[test]
    fn kept_and_recomputed_probabilities_give_identical_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = SeededRng::new(13);
        let mut var =
            |rows| Var::from_tensor(&rng.normal((2, rows, 6), 0.0, 1.0, DType::F32, &dev)?);
        let (q, k, v) = (var(5)?, var(4)?, var(4)?);
        let grads = |keep: bool| -> Result<Vec<Vec<f32>>> {
            let op = super::FusedAttention::new(3, 0.5, false, keep);
            let out = q.apply_op3(&k, &v, op)?;
            output_and_grads(&out, &[&q, &k, &v])
        };
        assert_eq!(grads(true)?, grads(false)?);
        Ok(())
    }

    #[test]
    fn mismatched_operands_are_an_error_not_a_panic() -> Result<()> {
        let dev = Device::Cpu;
        let q = Tensor::zeros((2, 4, 6), DType::F32, &dev)?;
        let k = Tensor::zeros((2, 3, 8), DType::F32, &dev)?;
        assert!(multi_head_attention(&q, &k, &k, 2).is_err());
        assert!(multi_head_attention(&q, &q, &q, 4).is_err());
        assert!(causal_multi_head_attention(&q, &k, &k, 2).is_err());
        Ok(())
    }
}
