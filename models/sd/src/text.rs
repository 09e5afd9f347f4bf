//! A pipeline's text encoder with its tokenizer: `text_encoder/` (a transformers
//! `CLIPTextModel`, or SDXL's second `CLIPTextModelWithProjection`: `config.json` +
//! `model.safetensors`) and `tokenizer/`.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use serde::Deserialize;
use spo_clip::text::ClipTextTransformer;
use spo_clip::{ClipError, ClipTextConfig, ClipTokenizer, open_hf_tokenizer};
use spo_diffusion::DiffusionError;
use spo_diffusion::weights::component_var_builder;

use crate::error::Result;

/// A CLIP text encoder and the tokenizer that feeds it.
#[derive(Debug, Clone)]
pub struct TextEncoder {
    tokenizer: ClipTokenizer,
    model: ClipTextTransformer,
    /// `text_projection` (no bias) of a `CLIPTextModelWithProjection`.
    projection: Option<candle_nn::Linear>,
    width: usize,
    device: Device,
}

impl TextEncoder {
    /// Opens `encoder_dir` (config + weights, as `dtype` on `device`) and `tokenizer_dir`.
    pub fn open(
        encoder_dir: &Path,
        tokenizer_dir: &Path,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let config_path = encoder_dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|source| ClipError::Io {
            path: config_path.clone(),
            source,
        })?;
        let json_error = |source| DiffusionError::Json {
            path: config_path.clone(),
            source,
        };
        let json: serde_json::Value = serde_json::from_str(&text).map_err(json_error)?;
        let config = ClipTextConfig::deserialize(&json).map_err(json_error)?;
        let projection_dim = json["projection_dim"].as_u64().map(|d| d as usize);
        let tokenizer = open_hf_tokenizer(tokenizer_dir)?;
        if tokenizer.vocab_size() > config.vocab_size {
            return Err(DiffusionError::Incompatible {
                path: tokenizer_dir.to_path_buf(),
                message: format!(
                    "{} tokens, but the text encoder embeds {} (vocab_size in {})",
                    tokenizer.vocab_size(),
                    config.vocab_size,
                    config_path.display()
                ),
            }
            .into());
        }
        let vb = component_var_builder(encoder_dir, dtype, device)?;
        let projection = match projection_dim {
            Some(d) if vb.contains_tensor("text_projection.weight") => Some(
                candle_nn::linear_no_bias(config.hidden_size, d, vb.pp("text_projection"))?,
            ),
            _ => None,
        };
        // transformers 4 saved `text_model.*` (SD-1.5's and SDXL's repos); transformers 5
        // saves a CLIPTextModel's tensors without the prefix.
        let prefixed = vb.contains_tensor("text_model.embeddings.token_embedding.weight");
        let vb = if prefixed { vb.pp("text_model") } else { vb };
        let model = ClipTextTransformer::new(&config, vb)?;
        Ok(Self {
            tokenizer,
            model,
            projection,
            width: config.hidden_size,
            device: device.clone(),
        })
    }

    /// Features per token.
    pub fn width(&self) -> usize {
        self.width
    }

    /// `(b, 77)` ids of `prompts`, padded as the pipeline's tokenizer pads.
    pub fn token_ids(&self, prompts: &[&str]) -> Result<Tensor> {
        Ok(self.tokenizer.encode_batch(prompts, &self.device)?)
    }

    /// `(b, 77, d)` final hidden states (after the final LayerNorm): SD-1.5's conditioning.
    pub fn last_hidden_state(&self, prompts: &[&str]) -> Result<Tensor> {
        Ok(self.model.last_hidden_state(&self.token_ids(prompts)?)?)
    }

    /// SDXL's use of an encoder: the penultimate layer's states `(b, 77, d)` and the pooled
    /// state at the end-of-text token, through `text_projection` where the encoder has one.
    pub fn penultimate_and_pooled(&self, prompts: &[&str]) -> Result<(Tensor, Tensor)> {
        let ids = self.token_ids(prompts)?;
        let layers = self.model.num_layers().saturating_sub(1);
        let states = self.model.hidden_state_after(&ids, layers)?;
        let pooled = self.model.forward(&ids)?;
        let pooled = match &self.projection {
            Some(p) => p.forward(&pooled)?,
            None => pooled,
        };
        Ok((states, pooled))
    }
}
