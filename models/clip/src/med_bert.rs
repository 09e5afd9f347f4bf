//! BLIP's "MED" BERT encoder as ImageReward runs it (THUDM/ImageReward
//! `ImageReward/models/BLIP/med.py`, `mode='multimodal'`): word + absolute position embeddings
//! (no token types) → LayerNorm; each post-norm layer is bidirectional self-attention with the
//! padding mask `(1 − mask)·(−10000)`, then cross-attention from the text (queries) to the image
//! tokens (keys/values of width `encoder_width`, no mask), then the GELU feed-forward. Key
//! names follow the checkpoint (`embeddings.*`, `encoder.layer.N.{attention, crossattention,
//! intermediate, output}.*`, `LayerNorm` capitalised).

use candle_core::{D, DType, Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};
use spo_nn::attention::{merge_heads, split_heads};
use spo_nn::linear::{Dense, dense};
use spo_nn::{Activation, LayerNorm};

/// `med_config.json` (HF `BertConfig` names). ImageReward's `BLIP_Pretrain` sets
/// `encoder_width` to the vision width, which is what the loader does too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MedConfig {
    /// bert-base-uncased (30522) + `[DEC]` + `[ENC]`.
    pub vocab_size: usize,
    /// Residual width.
    pub hidden_size: usize,
    /// Number of layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Feed-forward width.
    pub intermediate_size: usize,
    /// Position table length.
    pub max_position_embeddings: usize,
    /// LayerNorm epsilon (1e-12).
    pub layer_norm_eps: f64,
    /// Feed-forward activation (`gelu`, exact).
    pub hidden_act: Activation,
    /// Width of the image tokens the cross-attention reads.
    pub encoder_width: usize,
}

impl Default for MedConfig {
    fn default() -> Self {
        Self {
            vocab_size: 30524,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            max_position_embeddings: 512,
            layer_norm_eps: 1e-12,
            hidden_act: Activation::Gelu,
            encoder_width: 1024,
        }
    }
}

#[derive(Debug, Clone)]
struct Attention {
    query: Dense,
    key: Dense,
    value: Dense,
    dense: Dense,
    layer_norm: LayerNorm,
    heads: usize,
}

impl Attention {
    /// `attention` or `crossattention` (`kv_width` is `encoder_width` for the latter).
    fn new(c: &MedConfig, kv_width: usize, vb: VarBuilder) -> Result<Self> {
        let h = c.hidden_size;
        let s = vb.pp("self");
        let o = vb.pp("output");
        Ok(Self {
            query: dense(h, h, s.pp("query"))?,
            key: dense(kv_width, h, s.pp("key"))?,
            value: dense(kv_width, h, s.pp("value"))?,
            dense: dense(h, h, o.pp("dense"))?,
            layer_norm: LayerNorm::new(h, c.layer_norm_eps, o.pp("LayerNorm"))?,
            heads: c.num_attention_heads,
        })
    }

    /// `LayerNorm(xs + dense(attn(xs → kv)))`; `mask` is additive, `(b, 1, m)`.
    fn forward(&self, xs: &Tensor, kv: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, _, h) = xs.dims3()?;
        let q = split_heads(&self.query.forward(xs)?, self.heads)?;
        let k = split_heads(&self.key.forward(kv)?, self.heads)?;
        let v = split_heads(&self.value.forward(kv)?, self.heads)?;
        let scale = 1.0 / ((h / self.heads) as f64).sqrt();
        // (b·heads, n, m)
        let mut scores = (q.matmul(&k.t()?)? * scale)?;
        if let Some(mask) = mask {
            let (bh, _, m) = scores.dims3()?;
            let mask = mask
                .unsqueeze(1)?
                .broadcast_as((b, self.heads, 1, m))?
                .reshape((bh, 1, m))?;
            scores = scores.broadcast_add(&mask)?;
        }
        let probs = if scores.track_op() {
            candle_nn::ops::softmax(&scores, D::Minus1)?
        } else {
            candle_nn::ops::softmax_last_dim(&scores)?
        };
        let ctx = merge_heads(&probs.matmul(&v)?, self.heads)?;
        self.layer_norm.forward(&(self.dense.forward(&ctx)? + xs)?)
    }
}

#[derive(Debug, Clone)]
struct Layer {
    attention: Attention,
    crossattention: Attention,
    intermediate: Dense,
    output: Dense,
    output_norm: LayerNorm,
    act: Activation,
}

impl Layer {
    fn new(c: &MedConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            attention: Attention::new(c, c.hidden_size, vb.pp("attention"))?,
            crossattention: Attention::new(c, c.encoder_width, vb.pp("crossattention"))?,
            intermediate: dense(
                c.hidden_size,
                c.intermediate_size,
                vb.pp("intermediate").pp("dense"),
            )?,
            output: dense(
                c.intermediate_size,
                c.hidden_size,
                vb.pp("output").pp("dense"),
            )?,
            output_norm: LayerNorm::new(
                c.hidden_size,
                c.layer_norm_eps,
                vb.pp("output").pp("LayerNorm"),
            )?,
            act: c.hidden_act,
        })
    }

    fn forward(&self, xs: &Tensor, mask: &Tensor, image: &Tensor) -> Result<Tensor> {
        let h = self.attention.forward(xs, xs, Some(mask))?;
        let h = self.crossattention.forward(&h, image, None)?;
        let f = self.act.apply(&self.intermediate.forward(&h)?)?;
        self.output_norm.forward(&(self.output.forward(&f)? + h)?)
    }
}

/// `blip.text_encoder` (`BertModel(add_pooling_layer=False)`).
#[derive(Debug, Clone)]
pub struct MedBert {
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    embeddings_norm: LayerNorm,
    layers: Vec<Layer>,
}

impl MedBert {
    /// Loads or creates the encoder under `vb` (`blip.text_encoder`).
    pub fn new(c: &MedConfig, vb: VarBuilder) -> Result<Self> {
        if c.num_attention_heads == 0 || !c.hidden_size.is_multiple_of(c.num_attention_heads) {
            candle_core::bail!("inconsistent MED config {c:?}");
        }
        let e = vb.pp("embeddings");
        let init = Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        Ok(Self {
            word_embeddings: e.pp("word_embeddings").get_with_hints(
                (c.vocab_size, c.hidden_size),
                "weight",
                init,
            )?,
            position_embeddings: e.pp("position_embeddings").get_with_hints(
                (c.max_position_embeddings, c.hidden_size),
                "weight",
                init,
            )?,
            embeddings_norm: LayerNorm::new(c.hidden_size, c.layer_norm_eps, e.pp("LayerNorm"))?,
            layers: (0..c.num_hidden_layers)
                .map(|i| Layer::new(c, vb.pp("encoder").pp("layer").pp(i)))
                .collect::<Result<Vec<_>>>()?,
        })
    }

    /// `(b, n)` ids, `(b, n)` 0/1 attention mask and `(b, m, encoder_width)` image tokens →
    /// `(b, n, hidden)` last hidden states.
    pub fn forward(&self, ids: &Tensor, attention_mask: &Tensor, image: &Tensor) -> Result<Tensor> {
        let (b, n) = ids.dims2()?;
        let h = self.word_embeddings.dim(1)?;
        let words = self
            .word_embeddings
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, n, h))?;
        let x = words.broadcast_add(&self.position_embeddings.narrow(0, 0, n)?)?;
        let mut x = self.embeddings_norm.forward(&x)?;
        // (b, 1, n): 0 for tokens, −10000 for padding.
        let mask = ((attention_mask.to_dtype(DType::F32)?.affine(-1.0, 1.0)? * -10000.0)?)
            .to_dtype(x.dtype())?
            .unsqueeze(1)?;
        for layer in &self.layers {
            x = layer.forward(&x, &mask, image)?;
        }
        Ok(x)
    }
}
