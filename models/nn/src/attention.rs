//! Multi-head scaled dot-product attention with a recorded backward pass.
//!
//! `candle_nn::ops::softmax_last_dim` has no backward, so gradients to queries and keys vanish
//! silently through it (huggingface/candle #2977). On the CPU in f32, attention is the single
//! fused op of [`crate::attention_fused`]; elsewhere it is composed from candle ops around the
//! differentiable softmax of [`crate::softmax`], with the scores upcast to f32 as diffusers'
//! `upcast_softmax` does.

use crate::attention_fused::FusedAttention;
use crate::softmax::softmax_last_dim;
use candle_core::{D, DType, Device, Result, Tensor};

/// `(b, n, heads·d) → (b·heads, n, d)`.
pub fn split_heads(xs: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, n, inner) = xs.dims3()?;
    xs.reshape((b, n, heads, inner / heads))?
        .transpose(1, 2)?
        .reshape((b * heads, n, inner / heads))
}

/// `(b·heads, n, d) → (b, n, heads·d)`.
pub fn merge_heads(xs: &Tensor, heads: usize) -> Result<Tensor> {
    let (bh, n, d) = xs.dims3()?;
    xs.reshape((bh / heads, heads, n, d))?
        .transpose(1, 2)?
        .reshape((bh / heads, n, heads * d))
}

/// The f32 scores one un-tracked attention call forms at a time: without a gradient to take,
/// the queries are processed in row blocks that keep them under this (SD-1.5's 64×64 latents
/// would otherwise form 4096 × 4096 scores per head and image at once, several times over).
pub const SCORES_BLOCK_BYTES: usize = 64 << 20;

/// `softmax(q·kᵀ·scale + mask)·v` for `q: (B, n, d)`, `k, v: (B, m, d)` and an optional
/// additive `(n, m)` mask; returns `(B, n, d)`. Without a gradient to record, in blocks of
/// query rows (each row's softmax is its own, so the result is the same).
pub fn scaled_dot_product_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let (bh, n, _) = q.dims3()?;
    let m = k.dim(1)?;
    let rows = (SCORES_BLOCK_BYTES / (bh * m * 4).max(1)).max(1);
    let tracked = [q, k, v].iter().any(|t| t.track_op());
    if tracked || rows >= n {
        return attention_block(q, k, v, scale, mask);
    }
    let blocks = (0..n)
        .step_by(rows)
        .map(|start| {
            let len = rows.min(n - start);
            let mask = mask.map(|mk| mk.narrow(0, start, len)).transpose()?;
            attention_block(&q.narrow(1, start, len)?, k, v, scale, mask.as_ref())
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&blocks, 1)
}

/// [`scaled_dot_product_attention`] in one piece.
fn attention_block(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let dtype = q.dtype();
    // (B, n, m) scores in f32 around the softmax.
    let mut scores = (q
        .to_dtype(DType::F32)?
        .matmul(&k.to_dtype(DType::F32)?.t()?)?
        * scale)?;
    if let Some(mask) = mask {
        scores = scores.broadcast_add(&mask.to_dtype(DType::F32)?)?;
    }
    let probs = softmax_last_dim(&scores)?.to_dtype(dtype)?;
    probs.matmul(&v.contiguous()?)
}

/// Attention over `(b, n, heads·d)` projections, returning `(b, n, heads·d)`.
pub fn multi_head_attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
    attention(q, k, v, heads, false)
}

/// Causal self-attention (query `r` sees keys `0..=r`, as in CLIP's text tower) over
/// `(b, n, heads·d)` projections, returning `(b, n, heads·d)`.
pub fn causal_multi_head_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
) -> Result<Tensor> {
    attention(q, k, v, heads, true)
}

/// `1/√d` for `(…, heads·d)` projections; an error when the width does not split into `heads`.
fn head_scale(q: &Tensor, heads: usize) -> Result<f64> {
    let inner = q.dim(D::Minus1)?;
    if heads == 0 || inner % heads != 0 {
        candle_core::bail!("attention: width {inner} does not split into {heads} heads");
    }
    Ok(1.0 / ((inner / heads) as f64).sqrt())
}

fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, causal: bool) -> Result<Tensor> {
    let scale = head_scale(q, heads)?;
    if crate::fast_path::applies(&[q, k, v]) {
        let tracked = [q, k, v].iter().any(|t| t.track_op());
        let op = FusedAttention::new(heads, scale as f32, causal, tracked);
        return q
            .contiguous()?
            .apply_op3(&k.contiguous()?, &v.contiguous()?, op);
    }
    composed_multi_head_attention(q, k, v, heads, causal)
}

/// The additive causal mask `(n, n)`: 0 on and below the diagonal, −∞ above.
pub fn causal_mask(n: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let values: Vec<f32> = (0..n)
        .flat_map(|i| (0..n).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(values, (n, n), device)?.to_dtype(dtype)
}

/// [`multi_head_attention`] (or, `causal`, [`causal_multi_head_attention`]) from candle ops,
/// on every device.
pub fn composed_multi_head_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    causal: bool,
) -> Result<Tensor> {
    let scale = head_scale(q, heads)?;
    let (q, k, v) = (
        split_heads(q, heads)?,
        split_heads(k, heads)?,
        split_heads(v, heads)?,
    );
    let mask = if causal {
        Some(causal_mask(q.dim(1)?, DType::F32, q.device())?)
    } else {
        None
    };
    let out = scaled_dot_product_attention(&q, &k, &v, scale, mask.as_ref())?;
    merge_heads(&out, heads)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SeededRng;
    use candle_core::{Device, Var};

    #[test]
    fn split_then_merge_is_identity() -> Result<()> {
        let xs = Tensor::arange(0f32, 48., &Device::Cpu)?.reshape((2, 3, 8))?;
        let back = merge_heads(&split_heads(&xs, 4)?, 4)?;
        assert_eq!(xs.to_vec3::<f32>()?, back.to_vec3::<f32>()?);
        Ok(())
    }

    #[test]
    fn a_width_that_does_not_split_into_the_heads_is_an_error_on_every_path() -> Result<()> {
        let q = Tensor::zeros((1, 3, 6), DType::F32, &Device::Cpu)?;
        for heads in [0, 4] {
            for result in [
                multi_head_attention(&q, &q, &q, heads),
                composed_multi_head_attention(&q, &q, &q, heads, false),
            ] {
                let Err(e) = result else {
                    panic!("{heads} heads accepted for width 6");
                };
                let want = format!("width 6 does not split into {heads} heads");
                assert!(e.to_string().contains(&want), "{e}");
            }
        }
        Ok(())
    }

    #[test]
    fn untracked_attention_in_row_blocks_equals_one_block() -> Result<()> {
        // 4200 × 4200 f32 scores are over the block budget: two blocks of query rows, each with
        // its rows of the mask
        let dev = Device::Cpu;
        let mut rng = SeededRng::new(7);
        let n = 4200;
        assert!(n * n * 4 > SCORES_BLOCK_BYTES);
        let (q, k, v) = (
            rng.normal((1, n, 8), 0.0, 1.0, DType::F32, &dev)?,
            rng.normal((1, n, 8), 0.0, 1.0, DType::F32, &dev)?,
            rng.normal((1, n, 8), 0.0, 1.0, DType::F32, &dev)?,
        );
        let mask = causal_mask(n, DType::F32, &dev)?;
        let blocked = scaled_dot_product_attention(&q, &k, &v, 0.35, Some(&mask))?;
        let whole = attention_block(&q, &k, &v, 0.35, Some(&mask))?;
        let diff = (blocked - whole)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "{diff}");
        Ok(())
    }

    #[test]
    fn uniform_scores_average_the_values_and_gradients_reach_q_and_k() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = SeededRng::new(5);
        let q = Var::from_tensor(&rng.normal((1, 2, 4), 0.0, 1.0, DType::F32, &dev)?)?;
        let k = Var::from_tensor(&rng.normal((1, 3, 4), 0.0, 1.0, DType::F32, &dev)?)?;
        let v = Var::from_tensor(&rng.normal((1, 3, 4), 0.0, 1.0, DType::F32, &dev)?)?;
        // A zero scale makes every weight 1/3: the output is the mean of the values.
        let flat =
            scaled_dot_product_attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), 0.0, None)?;
        let mean = v.as_tensor().mean_keepdim(1)?.broadcast_as((1, 2, 4))?;
        let diff = (flat - mean)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6);
        let out = multi_head_attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), 2)?;
        let grads = (out.sqr()?.sum_all()?).backward()?;
        for var in [&q, &k, &v] {
            let g = grads
                .get(var)
                .expect("gradient recorded")
                .abs()?
                .sum_all()?;
            assert!(g.to_scalar::<f32>()? > 0.0);
        }
        Ok(())
    }
}
