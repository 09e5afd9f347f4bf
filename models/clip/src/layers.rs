//! The transformer pieces shared by CLIP's towers (HF `modeling_clip.py` names), with the
//! optional adaLN modulation of the step-aware preference model.
//!
//! Everything here records a backward pass when its input does: linear layers, LayerNorm and
//! attention are spo-nn's (on the CPU in f32, single fused kernels with their own backward).

use candle_core::{D, Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};
use spo_nn::attention::{causal_multi_head_attention, multi_head_attention};
use spo_nn::linear::{Dense, dense, linear_b};
use spo_nn::{Activation, LayerNorm};

/// `nn.LayerNorm(dim, eps)` with keys `weight`, `bias`.
pub(crate) fn layer_norm(dim: usize, eps: f64, vb: VarBuilder) -> Result<LayerNorm> {
    LayerNorm::new(dim, eps, vb)
}

/// `CLIPAttention`: `q_proj`, `k_proj`, `v_proj`, `out_proj`, all with bias.
#[derive(Debug, Clone)]
pub struct ClipAttention {
    q_proj: Dense,
    k_proj: Dense,
    v_proj: Dense,
    out_proj: Dense,
    num_heads: usize,
}

impl ClipAttention {
    /// Loads or creates the four projections of width `dim`.
    pub fn new(dim: usize, num_heads: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            q_proj: dense(dim, dim, vb.pp("q_proj"))?,
            k_proj: dense(dim, dim, vb.pp("k_proj"))?,
            v_proj: dense(dim, dim, vb.pp("v_proj"))?,
            out_proj: dense(dim, dim, vb.pp("out_proj"))?,
            num_heads,
        })
    }

    /// Self-attention over `(b, n, dim)`, causal (the text tower) or not.
    pub fn forward(&self, xs: &Tensor, causal: bool) -> Result<Tensor> {
        let q = self.q_proj.forward(xs)?;
        let k = self.k_proj.forward(xs)?;
        let v = self.v_proj.forward(xs)?;
        let out = if causal {
            causal_multi_head_attention(&q, &k, &v, self.num_heads)?
        } else {
            multi_head_attention(&q, &k, &v, self.num_heads)?
        };
        self.out_proj.forward(&out)
    }
}

/// `CLIPMLP`: `fc1` → activation → `fc2`.
#[derive(Debug, Clone)]
pub struct ClipMlp {
    fc1: Dense,
    fc2: Dense,
    act: Activation,
}

impl ClipMlp {
    /// Loads or creates `fc1` (dim → hidden) and `fc2` (hidden → dim).
    pub fn new(dim: usize, hidden: usize, act: Activation, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            fc1: dense(dim, hidden, vb.pp("fc1"))?,
            fc2: dense(hidden, dim, vb.pp("fc2"))?,
            act,
        })
    }

    /// `(…, dim) → (…, dim)`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let h = self.act.apply(&self.fc1.forward(xs)?)?;
        self.fc2.forward(&h)
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
    pub fn forward(&self, xs: &Tensor, causal: bool, cond: Option<&Tensor>) -> Result<Tensor> {
        match (&self.adaln_modulation, cond) {
            (None, None) => {
                let h = (xs
                    + self
                        .self_attn
                        .forward(&self.layer_norm1.forward(xs)?, causal)?)?;
                &h + self.mlp.forward(&self.layer_norm2.forward(&h)?)?
            }
            (Some(modulation), Some(c)) => {
                // (b, 1, 6·dim) → six (b, 1, dim): DiT's order.
                let m = modulation.forward(c)?.unsqueeze(1)?.chunk(6, D::Minus1)?;
                let (sh1, sc1, g1, sh2, sc2, g2) = (&m[0], &m[1], &m[2], &m[3], &m[4], &m[5]);
                let a = modulate(&self.layer_norm1.forward(xs)?, sh1, sc1)?;
                let h = (xs + self.self_attn.forward(&a, causal)?.broadcast_mul(g1)?)?;
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
    pub fn forward(&self, xs: &Tensor, causal: bool, cond: Option<&Tensor>) -> Result<Tensor> {
        let mut h = xs.clone();
        for layer in &self.layers {
            h = layer.forward(&h, causal, cond)?;
        }
        Ok(h)
    }
}
