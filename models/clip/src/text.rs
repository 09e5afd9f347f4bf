//! The CLIP text tower (`CLIPTextTransformer`): token + position embeddings, a causal
//! pre-norm transformer, a final LayerNorm, pooled at the first end-of-text token.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use spo_nn::LayerNorm;

use crate::config::ClipTextConfig;
use crate::layers::{ClipEncoder, LayerShape, layer_norm};

/// `embeddings.token_embedding.weight` and `embeddings.position_embedding.weight`.
#[derive(Debug, Clone)]
pub struct ClipTextEmbeddings {
    token_embedding: Tensor,
    position_embedding: Tensor,
}

impl ClipTextEmbeddings {
    fn new(c: &ClipTextConfig, vb: VarBuilder) -> Result<Self> {
        let init = Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        Ok(Self {
            token_embedding: vb.pp("token_embedding").get_with_hints(
                (c.vocab_size, c.hidden_size),
                "weight",
                init,
            )?,
            position_embedding: vb.pp("position_embedding").get_with_hints(
                (c.max_position_embeddings, c.hidden_size),
                "weight",
                init,
            )?,
        })
    }

    /// `(b, n)` ids → `(b, n, dim)`.
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, n) = ids.dims2()?;
        let dim = self.token_embedding.dim(1)?;
        let tokens = self
            .token_embedding
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, n, dim))?;
        tokens.broadcast_add(&self.position_embedding.narrow(0, 0, n)?)
    }
}

/// `text_model`: the text tower up to the pooled (pre-projection) state.
#[derive(Debug, Clone)]
pub struct ClipTextTransformer {
    embeddings: ClipTextEmbeddings,
    encoder: ClipEncoder,
    final_layer_norm: LayerNorm,
    eos_token_id: u32,
    context: usize,
}

impl ClipTextTransformer {
    /// Loads or creates the tower under `vb` (`text_model`).
    pub fn new(c: &ClipTextConfig, vb: VarBuilder) -> Result<Self> {
        let shape = LayerShape {
            dim: c.hidden_size,
            hidden: c.intermediate_size,
            heads: c.num_attention_heads,
            act: c.hidden_act,
            eps: c.layer_norm_eps,
            time_conditioned: false,
        };
        Ok(Self {
            embeddings: ClipTextEmbeddings::new(c, vb.pp("embeddings"))?,
            encoder: ClipEncoder::new(c.num_hidden_layers, shape, vb.pp("encoder"))?,
            final_layer_norm: layer_norm(
                c.hidden_size,
                c.layer_norm_eps,
                vb.pp("final_layer_norm"),
            )?,
            eos_token_id: c.eos_token_id,
            context: c.max_position_embeddings,
        })
    }

    /// Index of the pooled token in each row: the first `eos_token_id` (the first largest id for
    /// HF's legacy `eos_token_id == 2`, which is what `argmax(input_ids)` returns).
    pub fn pool_positions(&self, ids: &Tensor) -> Result<Vec<u32>> {
        let rows = ids.to_dtype(candle_core::DType::U32)?.to_vec2::<u32>()?;
        rows.iter()
            .map(|row| {
                let target = if self.eos_token_id == 2 {
                    row.iter().copied().max().unwrap_or(0)
                } else {
                    self.eos_token_id
                };
                row.iter()
                    .position(|&id| id == target)
                    .map(|p| p as u32)
                    .ok_or_else(|| {
                        candle_core::Error::Msg(format!("token row has no end-of-text id {target}"))
                    })
            })
            .collect()
    }

    /// `(b, n)` ids (n ≤ 77) → `(b, n, dim)` final states after `final_layer_norm`.
    pub fn last_hidden_state(&self, ids: &Tensor) -> Result<Tensor> {
        let (_, n) = ids.dims2()?;
        if n > self.context {
            candle_core::bail!("{n} tokens exceed the context length {}", self.context);
        }
        let h = self.embeddings.forward(ids)?;
        let h = self.encoder.forward(&h, true, None)?;
        self.final_layer_norm.forward(&h)
    }

    /// `(b, n)` ids → `(b, n, dim)` states after the first `layers` transformer layers, without
    /// the final LayerNorm (`hidden_states[layers]` in transformers): SDXL conditions on the
    /// penultimate, `layers = num_layers() − 1`.
    pub fn hidden_state_after(&self, ids: &Tensor, layers: usize) -> Result<Tensor> {
        let (_, n) = ids.dims2()?;
        if n > self.context {
            candle_core::bail!("{n} tokens exceed the context length {}", self.context);
        }
        let mut h = self.embeddings.forward(ids)?;
        for layer in self.encoder.layers().iter().take(layers) {
            h = layer.forward(&h, true, None)?;
        }
        Ok(h)
    }

    /// The number of transformer layers.
    pub fn num_layers(&self) -> usize {
        self.encoder.layers().len()
    }

    /// `(b, n)` ids → `(b, dim)` pooled states. Positions after the last pooled token are
    /// dropped first: under the causal mask they cannot reach any pooled state.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let positions = self.pool_positions(ids)?;
        let used = positions.iter().max().map_or(1, |&p| p as usize + 1);
        let ids = ids.narrow(1, 0, used)?;
        let h = self.last_hidden_state(&ids)?;
        let (b, n, dim) = h.dims3()?;
        let index: Vec<u32> = positions
            .into_iter()
            .enumerate()
            .map(|(row, p)| row as u32 * n as u32 + p)
            .collect();
        let index = Tensor::from_vec(index, b, h.device())?;
        // (b·n, dim) → (b, dim)
        h.reshape((b * n, dim))?.index_select(&index, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    fn tower(eos_token_id: u32) -> Result<ClipTextTransformer> {
        let cfg = ClipTextConfig {
            vocab_size: 49408,
            hidden_size: 8,
            intermediate_size: 16,
            num_hidden_layers: 1,
            num_attention_heads: 2,
            eos_token_id,
            ..ClipTextConfig::default()
        };
        let varmap = VarMap::new();
        ClipTextTransformer::new(
            &cfg,
            spo_nn::seeded_var_builder(&varmap, 0, DType::F32, &Device::Cpu),
        )
    }

    #[test]
    fn pools_at_the_first_end_of_text_token_in_both_config_conventions() -> Result<()> {
        // Padding with the end-of-text id itself (HF's laion tokenizer) and with 0 (open_clip).
        let ids = Tensor::new(
            &[[49406u32, 320, 49407, 49407], [49406, 320, 2368, 49407]],
            &Device::Cpu,
        )?;
        assert_eq!(tower(49407)?.pool_positions(&ids)?, vec![2, 3]);
        // Legacy configs say eos_token_id = 2 and HF pools at argmax(ids): the first 49407.
        assert_eq!(tower(2)?.pool_positions(&ids)?, vec![2, 3]);
        let missing = Tensor::new(&[[49406u32, 320, 0, 0]], &Device::Cpu)?;
        assert!(tower(49407)?.pool_positions(&missing).is_err());
        Ok(())
    }

    #[test]
    fn positions_after_the_pooled_token_do_not_change_the_result() -> Result<()> {
        let t = tower(49407)?;
        let short = Tensor::new(&[[49406u32, 320, 49407]], &Device::Cpu)?;
        let padded = Tensor::new(&[[49406u32, 320, 49407, 0, 0, 0, 0]], &Device::Cpu)?;
        let a = t.forward(&short)?.flatten_all()?.to_vec1::<f32>()?;
        // The full-length hidden states, read at the pooled position.
        let full = t
            .last_hidden_state(&padded)?
            .narrow(1, 2, 1)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let worst = a
            .iter()
            .zip(&full)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-6, "{worst}");
        assert_eq!(t.forward(&padded)?.flatten_all()?.to_vec1::<f32>()?, a);
        Ok(())
    }
}
