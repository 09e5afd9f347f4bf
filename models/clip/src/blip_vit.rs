//! BLIP's vision transformer as ImageReward uses it (THUDM/ImageReward
//! `ImageReward/models/BLIP/vit.py`, timm-style): patch embedding (a stride-16 convolution with
//! bias), class token, learned position embedding, pre-norm blocks with a fused `qkv`
//! projection, exact GELU, LayerNorm eps 1e-6, and a final `norm` over every token. Key names
//! follow the checkpoint (`cls_token`, `pos_embed`, `patch_embed.proj`, `blocks.N.*`, `norm`).

use candle_core::{D, Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};
use spo_nn::LayerNorm;
use spo_nn::activation::gelu_exact;
use spo_nn::attention::{merge_heads, split_heads};
use spo_nn::linear::{Dense, dense};

/// The BLIP ViT's shape (`create_vit('large')`: 1024 wide, 24 deep, 16 heads, patch 16).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BlipVisionConfig {
    /// Residual width.
    pub embed_dim: usize,
    /// Number of blocks.
    pub depth: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// Input side in pixels.
    pub image_size: usize,
    /// MLP width over residual width.
    pub mlp_ratio: usize,
}

impl Default for BlipVisionConfig {
    fn default() -> Self {
        Self {
            embed_dim: 1024,
            depth: 24,
            num_heads: 16,
            patch_size: 16,
            image_size: 224,
            mlp_ratio: 4,
        }
    }
}

const EPS: f64 = 1e-6;

#[derive(Debug, Clone)]
struct Block {
    norm1: LayerNorm,
    qkv: Dense,
    proj: Dense,
    norm2: LayerNorm,
    fc1: Dense,
    fc2: Dense,
    heads: usize,
}

impl Block {
    fn new(c: &BlipVisionConfig, vb: VarBuilder) -> Result<Self> {
        let d = c.embed_dim;
        Ok(Self {
            norm1: LayerNorm::new(d, EPS, vb.pp("norm1"))?,
            qkv: dense(d, 3 * d, vb.pp("attn").pp("qkv"))?,
            proj: dense(d, d, vb.pp("attn").pp("proj"))?,
            norm2: LayerNorm::new(d, EPS, vb.pp("norm2"))?,
            fc1: dense(d, c.mlp_ratio * d, vb.pp("mlp").pp("fc1"))?,
            fc2: dense(c.mlp_ratio * d, d, vb.pp("mlp").pp("fc2"))?,
            heads: c.num_heads,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (_, _, d) = xs.dims3()?;
        // (b, n, 3d) → q, k, v each (b·heads, n, d_head); timm's order is q, k, v.
        let qkv = self
            .qkv
            .forward(&self.norm1.forward(xs)?)?
            .chunk(3, D::Minus1)?;
        let (q, k, v) = (
            split_heads(&qkv[0].contiguous()?, self.heads)?,
            split_heads(&qkv[1].contiguous()?, self.heads)?,
            split_heads(&qkv[2].contiguous()?, self.heads)?,
        );
        let scale = 1.0 / ((d / self.heads) as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?;
        let probs = if scores.track_op() {
            candle_nn::ops::softmax(&scores, D::Minus1)?
        } else {
            candle_nn::ops::softmax_last_dim(&scores)?
        };
        let attn = merge_heads(&probs.matmul(&v)?, self.heads)?;
        let h = (xs + self.proj.forward(&attn)?)?;
        let m = gelu_exact(&self.fc1.forward(&self.norm2.forward(&h)?)?)?;
        &h + self.fc2.forward(&m)?
    }
}

/// `blip.visual_encoder`.
#[derive(Debug, Clone)]
pub struct BlipVisionTransformer {
    cls_token: Tensor,
    pos_embed: Tensor,
    /// `patch_embed.proj`: weight `(d, 3, p, p)` and bias `(d,)`.
    patch_weight: Tensor,
    patch_bias: Tensor,
    blocks: Vec<Block>,
    norm: LayerNorm,
    config: BlipVisionConfig,
}

impl BlipVisionTransformer {
    /// Loads or creates the tower under `vb` (`blip.visual_encoder`).
    pub fn new(c: &BlipVisionConfig, vb: VarBuilder) -> Result<Self> {
        if c.patch_size == 0
            || !c.image_size.is_multiple_of(c.patch_size)
            || !c.embed_dim.is_multiple_of(c.num_heads.max(1))
        {
            candle_core::bail!("inconsistent BLIP vision config {c:?}");
        }
        let d = c.embed_dim;
        let g = c.image_size / c.patch_size;
        let init = Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let proj = vb.pp("patch_embed").pp("proj");
        Ok(Self {
            cls_token: vb.get_with_hints((1, 1, d), "cls_token", init)?,
            pos_embed: vb.get_with_hints((1, g * g + 1, d), "pos_embed", init)?,
            patch_weight: proj.get_with_hints(
                (d, 3, c.patch_size, c.patch_size),
                "weight",
                init,
            )?,
            patch_bias: proj.get_with_hints(d, "bias", Init::Const(0.0))?,
            blocks: (0..c.depth)
                .map(|i| Block::new(c, vb.pp("blocks").pp(i)))
                .collect::<Result<Vec<_>>>()?,
            norm: LayerNorm::new(d, EPS, vb.pp("norm"))?,
            config: c.clone(),
        })
    }

    /// `(b, 3, s, s)` normalised pixels → `(b, 1 + g², d)` token states.
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = pixels.dims4()?;
        let (s, p, d) = (
            self.config.image_size,
            self.config.patch_size,
            self.config.embed_dim,
        );
        if h != s || w != s {
            candle_core::bail!("BLIP vision tower expects {s}×{s} pixels, got {h}×{w}");
        }
        let g = s / p;
        // The stride-p convolution as one matmul: (b·g², c·p·p) · (c·p·p, d).
        let patches = pixels
            .reshape((b, c, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b * g * g, c * p * p))?;
        let tokens = patches
            .matmul(&self.patch_weight.reshape((d, c * p * p))?.t()?)?
            .broadcast_add(&self.patch_bias)?
            .reshape((b, g * g, d))?;
        let cls = self.cls_token.broadcast_as((b, 1, d))?;
        let mut x = Tensor::cat(&[&cls, &tokens], 1)?.broadcast_add(&self.pos_embed)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        self.norm.forward(&x)
    }
}
