//! The transformer pieces shared by CLIP's towers (HF `modeling_clip.py` names), with the
//! optional adaLN modulation of the step-aware preference model.
//!
//! Everything here records a backward pass when its input does (spo-nn's LayerNorm; attention
//! with the differentiable softmax). When nothing upstream tracks gradients (scoring with
//! loaded weights) attention uses candle's fused `softmax_last_dim`, which is exact but has no
//! backward.

use candle_core::{D, DType, Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};
use spo_nn::attention::{merge_heads, split_heads};
use spo_nn::linear::{linear, linear_b};
use spo_nn::{Activation, LayerNorm};

/// Applies a linear layer to `(…, in)` as one 2-D matmul.
pub(crate) fn apply_linear(layer: &Linear, xs: &Tensor) -> Result<Tensor> {
    let dims = xs.dims().to_vec();
    let Some((&last, lead)) = dims.split_last() else {
        return layer.forward(xs);
    };
    let rows: usize = lead.iter().product();
    let ys = layer.forward(&xs.reshape((rows, last))?)?;
    let out = ys.dim(1)?;
    let mut shape = lead.to_vec();
    shape.push(out);
    ys.reshape(shape)
}

/// `nn.LayerNorm(dim, eps)` with keys `weight`, `bias`.
pub(crate) fn layer_norm(dim: usize, eps: f64, vb: VarBuilder) -> Result<LayerNorm> {
    LayerNorm::new(dim, eps, vb)
}

/// Softmax over the last dimension, differentiable when the scores track gradients.
fn softmax(scores: &Tensor) -> Result<Tensor> {
    if scores.track_op() {
        candle_nn::ops::softmax(scores, D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(scores)
    }
}

/// `CLIPAttention`: `q_proj`, `k_proj`, `v_proj`, `out_proj`, all with bias.
#[derive(Debug, Clone)]
pub struct ClipAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    num_heads: usize,
}

impl ClipAttention {
    /// Loads or creates the four projections of width `dim`.
    pub fn new(dim: usize, num_heads: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            q_proj: linear(dim, dim, vb.pp("q_proj"))?,
            k_proj: linear(dim, dim, vb.pp("k_proj"))?,
            v_proj: linear(dim, dim, vb.pp("v_proj"))?,
            out_proj: linear(dim, dim, vb.pp("out_proj"))?,
            num_heads,
        })
    }

    /// Self-attention over `(b, n, dim)` with an optional additive `(n, n)` mask.
    pub fn forward(&self, xs: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (_, _, dim) = xs.dims3()?;
        let scale = 1.0 / ((dim / self.num_heads) as f64).sqrt();
        // (b·heads, n, d_head)
        let q = split_heads(&apply_linear(&self.q_proj, xs)?, self.num_heads)?;
        let k = split_heads(&apply_linear(&self.k_proj, xs)?, self.num_heads)?;
        let v = split_heads(&apply_linear(&self.v_proj, xs)?, self.num_heads)?;
        // (b·heads, n, n)
        let mut scores = (q.matmul(&k.t()?)? * scale)?;
        if let Some(mask) = mask {
            scores = scores.broadcast_add(mask)?;
        }
        let out = softmax(&scores)?.matmul(&v)?;
        apply_linear(&self.out_proj, &merge_heads(&out, self.num_heads)?)
    }
}

/// `CLIPMLP`: `fc1` → activation → `fc2`.
#[derive(Debug, Clone)]
pub struct ClipMlp {
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl ClipMlp {
    /// Loads or creates `fc1` (dim → hidden) and `fc2` (hidden → dim).
    pub fn new(dim: usize, hidden: usize, act: Activation, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            fc1: linear(dim, hidden, vb.pp("fc1"))?,
            fc2: linear(hidden, dim, vb.pp("fc2"))?,
            act,
        })
    }

    /// `(…, dim) → (…, dim)`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let h = self.act.apply(&apply_linear(&self.fc1, xs)?)?;
        apply_linear(&self.fc2, &h)
    }
}

/// `x·(1 + scale) + shift` with `(b, 1, dim)` modulation broadcast over tokens.
pub(crate) fn modulate(xs: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    xs.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(shift)
}

/// `CLIPEncoderLayer`, pre-norm; with `adaLN_modulation` it is the SPM's time-conditioned layer.
#[derive(Debug, Clone)]
pub struct ClipEncoderLayer {
    self_attn: ClipAttention,
    layer_norm1: LayerNorm,
    mlp: ClipMlp,
    layer_norm2: LayerNorm,
    /// Checkpoint key `adaLN_modulation.1` (index 0 is the parameter-free SiLU):
    /// `Linear(dim, 6·dim)` giving (shift, scale, gate) for attention, then for the MLP.
    adaln_modulation: Option<Linear>,
}

/// Shapes of one encoder layer.
#[derive(Debug, Clone, Copy)]
pub struct LayerShape {
    /// Residual width.
    pub dim: usize,
    /// MLP hidden width.
    pub hidden: usize,
    /// Attention heads.
    pub heads: usize,
    /// MLP activation.
    pub act: Activation,
    /// LayerNorm epsilon.
    pub eps: f64,
    /// Whether the layer has the SPM's `adaLN_modulation`.
    pub time_conditioned: bool,
}

impl ClipEncoderLayer {
    /// Loads or creates one layer under `vb` (`…encoder.layers.N`).
    pub fn new(s: LayerShape, vb: VarBuilder) -> Result<Self> {
        let adaln_modulation = if s.time_conditioned {
            Some(linear_b(
                s.dim,
                6 * s.dim,
                true,
                vb.pp("adaLN_modulation").pp("1"),
            )?)
        } else {
            None
        };
        Ok(Self {
            self_attn: ClipAttention::new(s.dim, s.heads, vb.pp("self_attn"))?,
            layer_norm1: layer_norm(s.dim, s.eps, vb.pp("layer_norm1"))?,
            mlp: ClipMlp::new(s.dim, s.hidden, s.act, vb.pp("mlp"))?,
            layer_norm2: layer_norm(s.dim, s.eps, vb.pp("layer_norm2"))?,
            adaln_modulation,
        })
    }

    /// The adaLN linear layer, if time-conditioned.
    pub fn adaln_modulation(&self) -> Option<&Linear> {
        self.adaln_modulation.as_ref()
    }

    /// `(b, n, dim) → (b, n, dim)`. `cond` is SiLU(τ), `(b, dim)`, required exactly when the
    /// layer is time-conditioned.
    pub fn forward(
        &self,
        xs: &Tensor,
        mask: Option<&Tensor>,
        cond: Option<&Tensor>,
    ) -> Result<Tensor> {
        match (&self.adaln_modulation, cond) {
            (None, None) => {
                let h = (xs
                    + self
                        .self_attn
                        .forward(&self.layer_norm1.forward(xs)?, mask)?)?;
                &h + self.mlp.forward(&self.layer_norm2.forward(&h)?)?
            }
            (Some(modulation), Some(c)) => {
                // (b, 1, 6·dim) → six (b, 1, dim): DiT's order.
                let m = modulation.forward(c)?.unsqueeze(1)?.chunk(6, D::Minus1)?;
                let (sh1, sc1, g1, sh2, sc2, g2) = (&m[0], &m[1], &m[2], &m[3], &m[4], &m[5]);
                let a = modulate(&self.layer_norm1.forward(xs)?, sh1, sc1)?;
                let h = (xs + self.self_attn.forward(&a, mask)?.broadcast_mul(g1)?)?;
                let f = modulate(&self.layer_norm2.forward(&h)?, sh2, sc2)?;
                &h + self.mlp.forward(&f)?.broadcast_mul(g2)?
            }
            (Some(_), None) => {
                candle_core::bail!("time-conditioned layer called without a timestep")
            }
            (None, Some(_)) => candle_core::bail!("timestep given to a layer without adaLN"),
        }
    }
}

/// `CLIPEncoder`: the stack of layers (`layers.N`).
#[derive(Debug, Clone)]
pub struct ClipEncoder {
    layers: Vec<ClipEncoderLayer>,
}

impl ClipEncoder {
    /// Loads or creates `count` layers under `vb` (`…encoder`).
    pub fn new(count: usize, shape: LayerShape, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("layers");
        let layers = (0..count)
            .map(|i| ClipEncoderLayer::new(shape, vb.pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers })
    }

    /// The layers, in order.
    pub fn layers(&self) -> &[ClipEncoderLayer] {
        &self.layers
    }

    /// Runs every layer.
    pub fn forward(
        &self,
        xs: &Tensor,
        mask: Option<&Tensor>,
        cond: Option<&Tensor>,
    ) -> Result<Tensor> {
        let mut h = xs.clone();
        for layer in &self.layers {
            h = layer.forward(&h, mask, cond)?;
        }
        Ok(h)
    }
}

/// The additive causal mask `(n, n)`: 0 on and below the diagonal, −∞ above.
pub(crate) fn causal_mask(n: usize, dtype: DType, device: &candle_core::Device) -> Result<Tensor> {
    let values: Vec<f32> = (0..n)
        .flat_map(|i| (0..n).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(values, (n, n), device)?.to_dtype(dtype)
}
