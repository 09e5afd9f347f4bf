//! diffusers' `Transformer2DModel` with `BasicTransformerBlock`s and the GEGLU `FeedForward`
//! (`src/diffusers/models/transformers/transformer_2d.py`, `models/attention.py`).

use candle_core::{Module, Tensor};
use candle_nn::{Linear, VarBuilder};
use spo_nn::checkpoint::Segments;
use spo_nn::linear::{forward_2d, geglu_forward_2d, linear};
use spo_nn::{GroupNorm, LayerNorm};

use crate::attention::{Attention, AttentionSpec};
use crate::error::{Result, into_candle};

/// `FeedForward(dim, activation_fn="geglu")`: `net.2(h·gelu(g))` with `(h, g) = net.0.proj(x)`.
#[derive(Debug, Clone)]
struct FeedForward {
    proj: Linear,
    out: Linear,
}

impl FeedForward {
    fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        let inner = 4 * dim;
        Ok(Self {
            proj: linear(dim, 2 * inner, vb.pp("net").pp("0").pp("proj"))?,
            out: linear(inner, dim, vb.pp("net").pp("2"))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let gated = geglu_forward_2d(&self.proj, xs)?;
        Ok(forward_2d(&self.out, &gated)?)
    }
}

/// Self-attention, cross-attention and feed-forward, each pre-LayerNormed and residual.
#[derive(Debug, Clone)]
pub struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: FeedForward,
}

impl BasicTransformerBlock {
    fn new(dim: usize, heads: usize, cross_dim: usize, vb: VarBuilder) -> Result<Self> {
        let spec = |cross| AttentionSpec {
            query_dim: dim,
            cross_attention_dim: cross,
            heads,
            dim_head: dim / heads,
            bias: false,
        };
        Ok(Self {
            norm1: LayerNorm::new(dim, 1e-5, vb.pp("norm1"))?,
            attn1: Attention::new(spec(None), vb.pp("attn1"))?,
            norm2: LayerNorm::new(dim, 1e-5, vb.pp("norm2"))?,
            attn2: Attention::new(spec(Some(cross_dim)), vb.pp("attn2"))?,
            norm3: LayerNorm::new(dim, 1e-5, vb.pp("norm3"))?,
            ff: FeedForward::new(dim, vb.pp("ff"))?,
        })
    }

    fn forward(&self, xs: &Tensor, context: &Tensor) -> Result<Tensor> {
        let xs = (self.attn1.forward(&self.norm1.forward(xs)?, None)? + xs)?;
        let xs = (self
            .attn2
            .forward(&self.norm2.forward(&xs)?, Some(context))?
            + &xs)?;
        Ok((self.ff.forward(&self.norm3.forward(&xs)?)? + &xs)?)
    }
}

/// Projection in or out of the token sequence: a 1×1 conv (SD 1.5) or a linear (SDXL).
#[derive(Debug, Clone)]
enum Proj {
    Conv(spo_nn::Conv2d),
    Linear(Linear),
}

/// Geometry of a [`Transformer2DModel`].
#[derive(Debug, Clone, Copy)]
pub struct Transformer2DSpec {
    /// Channels in and out (= heads · head width).
    pub channels: usize,
    /// Attention heads.
    pub heads: usize,
    /// Number of `BasicTransformerBlock`s.
    pub layers: usize,
    /// Width of the text states.
    pub cross_attention_dim: usize,
    /// GroupNorm groups of `norm`.
    pub groups: usize,
    /// Linear (true) or 1×1 conv (false) `proj_in`/`proj_out`.
    pub use_linear_projection: bool,
}

/// GroupNorm, projection to tokens, transformer blocks, projection back, residual.
#[derive(Debug, Clone)]
pub struct Transformer2DModel {
    norm: GroupNorm,
    proj_in: Proj,
    transformer_blocks: Vec<BasicTransformerBlock>,
    proj_out: Proj,
}

impl Transformer2DModel {
    /// Loads or creates the weights under `vb`.
    pub fn new(spec: Transformer2DSpec, vb: VarBuilder) -> Result<Self> {
        let c = spec.channels;
        let proj = |vb: VarBuilder| -> Result<Proj> {
            Ok(if spec.use_linear_projection {
                Proj::Linear(linear(c, c, vb)?)
            } else {
                Proj::Conv(spo_nn::Conv2d::new(spo_nn::Conv2dSpec::same(c, c, 1), vb)?)
            })
        };
        let blocks = (0..spec.layers)
            .map(|i| {
                BasicTransformerBlock::new(
                    c,
                    spec.heads,
                    spec.cross_attention_dim,
                    vb.pp("transformer_blocks").pp(i),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            norm: GroupNorm::new(spec.groups, c, 1e-6, vb.pp("norm"))?,
            proj_in: proj(vb.pp("proj_in"))?,
            transformer_blocks: blocks,
            proj_out: proj(vb.pp("proj_out"))?,
        })
    }

    /// Every attention layer, for LoRA.
    pub fn attentions_mut(&mut self) -> Vec<&mut Attention> {
        self.transformer_blocks
            .iter_mut()
            .flat_map(|b| [&mut b.attn1, &mut b.attn2])
            .collect()
    }

    /// Every attention layer.
    pub fn attentions(&self) -> Vec<&Attention> {
        self.transformer_blocks
            .iter()
            .flat_map(|b| [&b.attn1, &b.attn2])
            .collect()
    }

    /// `xs: (b, c, h, w)`, `context: (b, m, cross_attention_dim)` → `(b, c, h, w)`; the
    /// projection in, each `BasicTransformerBlock` and the projection out are one segment each
    /// of `segs`.
    pub fn forward<'a>(
        &'a self,
        segs: &mut impl Segments<'a>,
        xs: &Tensor,
        context: &Tensor,
    ) -> Result<Tensor> {
        let mut hs = segs.run_one(std::slice::from_ref(xs), move |xs| {
            self.tokens_in(&xs[0]).map_err(into_candle)
        })?;
        for block in &self.transformer_blocks {
            hs = segs.run_one(&[hs, context.clone()], move |xs| {
                block.forward(&xs[0], &xs[1]).map_err(into_candle)
            })?;
        }
        Ok(segs.run_one(&[hs, xs.clone()], move |xs| {
            self.tokens_out(&xs[0], &xs[1]).map_err(into_candle)
        })?)
    }

    /// Norm and projection of `xs: (b, c, h, w)` to `(b, h·w, c)` tokens.
    fn tokens_in(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = xs.dims4()?;
        let hs = self.norm.forward(xs)?;
        Ok(match &self.proj_in {
            Proj::Conv(conv) => conv
                .forward(&hs)?
                .permute((0, 2, 3, 1))?
                .reshape((b, h * w, c))?,
            Proj::Linear(lin) => {
                forward_2d(lin, &hs.permute((0, 2, 3, 1))?.reshape((b, h * w, c))?)?
            }
        })
    }

    /// Tokens `hs` back to the shape of `xs`, projected, plus `xs` (the residual).
    fn tokens_out(&self, hs: &Tensor, xs: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = xs.dims4()?;
        let hs = match &self.proj_out {
            Proj::Conv(conv) => conv.forward(&hs.reshape((b, h, w, c))?.permute((0, 3, 1, 2))?)?,
            Proj::Linear(lin) => forward_2d(lin, hs)?
                .reshape((b, h, w, c))?
                .permute((0, 3, 1, 2))?,
        };
        Ok((hs + xs)?)
    }
}
