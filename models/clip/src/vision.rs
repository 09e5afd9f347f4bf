//! The CLIP vision tower (`CLIPVisionTransformer`): patch + class + position embeddings,
//! `pre_layrnorm` (sic, HF's spelling), a pre-norm transformer, and `post_layernorm` on the
//! class token. With time conditioning it is the SPM's image tower: adaLN in every layer and a
//! final shift/scale (`adaLN_modulation.1`, `Linear(dim, 2·dim)`) on the pooled token.

use candle_core::{D, IndexOp, Module, Result, Tensor};
use candle_nn::{Init, Linear, VarBuilder};
use spo_nn::LayerNorm;
use spo_nn::linear::{linear, linear_2d};

use crate::config::ClipVisionConfig;
use crate::layers::{ClipEncoder, LayerShape, layer_norm, modulate};

/// `embeddings.{class_embedding, patch_embedding.weight, position_embedding.weight}`.
#[derive(Debug, Clone)]
pub struct ClipVisionEmbeddings {
    class_embedding: Tensor,
    /// `(dim, channels, patch, patch)`, a stride-`patch` convolution without bias.
    patch_embedding: Tensor,
    position_embedding: Tensor,
    patch_size: usize,
    image_size: usize,
}

impl ClipVisionEmbeddings {
    fn new(c: &ClipVisionConfig, vb: VarBuilder) -> Result<Self> {
        let init = Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        Ok(Self {
            class_embedding: vb.get_with_hints(c.hidden_size, "class_embedding", init)?,
            patch_embedding: vb.pp("patch_embedding").get_with_hints(
                (c.hidden_size, c.num_channels, c.patch_size, c.patch_size),
                "weight",
                init,
            )?,
            position_embedding: vb.pp("position_embedding").get_with_hints(
                (c.num_positions(), c.hidden_size),
                "weight",
                init,
            )?,
            patch_size: c.patch_size,
            image_size: c.image_size,
        })
    }

    /// `(b, c, s, s)` pixels → `(b, 1 + g², dim)` tokens.
    fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = pixels.dims4()?;
        if h != self.image_size || w != self.image_size {
            candle_core::bail!(
                "vision tower expects {0}×{0} pixels, got {h}×{w}",
                self.image_size
            );
        }
        let (p, g) = (self.patch_size, self.image_size / self.patch_size);
        let dim = self.class_embedding.dim(0)?;
        // The stride-p convolution as one matmul: (b, c, g, p, g, p) → (b·g², c·p·p).
        let patches = pixels
            .reshape((b, c, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b * g * g, c * p * p))?;
        let kernel = self.patch_embedding.reshape((dim, c * p * p))?;
        // (b, g², dim). Without a gradient to record, spo-nn's GEMM over the cores (the same
        // bits as candle's matmul on one, tested); candle's matmul and its backward otherwise.
        let tokens = if patches.track_op() || kernel.track_op() {
            patches.matmul(&kernel.t()?)?
        } else {
            linear_2d(&patches, &kernel, None)?
        };
        let tokens = tokens.reshape((b, g * g, dim))?;
        let class = self
            .class_embedding
            .reshape((1, 1, dim))?
            .broadcast_as((b, 1, dim))?;
        Tensor::cat(&[&class, &tokens], 1)?.broadcast_add(&self.position_embedding)
    }
}

/// `vision_model`: the vision tower up to the pooled (pre-projection) state.
#[derive(Debug, Clone)]
pub struct ClipVisionTransformer {
    embeddings: ClipVisionEmbeddings,
    pre_layrnorm: LayerNorm,
    encoder: ClipEncoder,
    post_layernorm: LayerNorm,
    /// SPM only, checkpoint key `adaLN_modulation.1`: (shift, scale) for the pooled token.
    adaln_modulation: Option<Linear>,
}

impl ClipVisionTransformer {
    /// Loads or creates the tower under `vb` (`vision_model`); `time_conditioned` adds the
    /// SPM's adaLN layers.
    pub fn new(c: &ClipVisionConfig, time_conditioned: bool, vb: VarBuilder) -> Result<Self> {
        let shape = LayerShape {
            dim: c.hidden_size,
            hidden: c.intermediate_size,
            heads: c.num_attention_heads,
            act: c.hidden_act,
            eps: c.layer_norm_eps,
            time_conditioned,
        };
        let adaln_modulation = if time_conditioned {
            Some(linear(
                c.hidden_size,
                2 * c.hidden_size,
                vb.pp("adaLN_modulation").pp("1"),
            )?)
        } else {
            None
        };
        Ok(Self {
            embeddings: ClipVisionEmbeddings::new(c, vb.pp("embeddings"))?,
            pre_layrnorm: layer_norm(c.hidden_size, c.layer_norm_eps, vb.pp("pre_layrnorm"))?,
            encoder: ClipEncoder::new(c.num_hidden_layers, shape, vb.pp("encoder"))?,
            post_layernorm: layer_norm(c.hidden_size, c.layer_norm_eps, vb.pp("post_layernorm"))?,
            adaln_modulation,
        })
    }

    /// The encoder (for the SPM's adaLN initialisation).
    pub fn encoder(&self) -> &ClipEncoder {
        &self.encoder
    }

    /// The final adaLN layer, if time-conditioned.
    pub fn adaln_modulation(&self) -> Option<&Linear> {
        self.adaln_modulation.as_ref()
    }

    /// `(b, 3, s, s)` normalised pixels → `(b, dim)` pooled states. `cond` is SiLU(τ), `(b, dim)`,
    /// given exactly when the tower is time-conditioned.
    pub fn forward(&self, pixels: &Tensor, cond: Option<&Tensor>) -> Result<Tensor> {
        let h = self
            .pre_layrnorm
            .forward(&self.embeddings.forward(pixels)?)?;
        let h = self.encoder.forward(&h, false, cond)?;
        // (b, dim): the class token.
        let pooled = self
            .post_layernorm
            .forward(&h.i((.., 0, ..))?.contiguous()?)?;
        match (&self.adaln_modulation, cond) {
            (Some(m), Some(c)) => {
                let parts = m.forward(c)?.chunk(2, D::Minus1)?;
                modulate(&pooled, &parts[0], &parts[1])
            }
            (None, None) => Ok(pooled),
            (Some(_), None) => {
                candle_core::bail!("time-conditioned tower called without a timestep")
            }
            (None, Some(_)) => candle_core::bail!("timestep given to a tower without adaLN"),
        }
    }
}
