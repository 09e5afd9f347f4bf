//! CLIP configurations with HF transformers' `config.json` field names.
//!
//! A real `config.json` (PickScore_v1, openai/clip-vit-large-patch14, a converted HPSv2) deserialises
//! as is; absent fields take HF's `CLIPTextConfig`/`CLIPVisionConfig` defaults, which are
//! OpenAI's ViT-B/32. Presets cover the towers the scorers use: [`ClipConfig::vit_b_32`],
//! [`ClipConfig::vit_l_14`] (OpenAI, QuickGELU: aesthetic, CLIP score) and
//! [`ClipConfig::vit_h_14`] (LAION/OpenCLIP, exact GELU: PickScore, HPSv2).

use std::path::Path;

use serde::{Deserialize, Serialize};
use spo_nn::Activation;

use crate::error::ClipError;

/// The text tower (`CLIPTextConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClipTextConfig {
    /// Vocabulary size (49408 for the CLIP BPE).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP's hidden layer.
    pub intermediate_size: usize,
    /// Number of transformer layers.
    pub num_hidden_layers: usize,
    /// Number of attention heads (`hidden_size` must be a multiple).
    pub num_attention_heads: usize,
    /// Context length: 77.
    pub max_position_embeddings: usize,
    /// `gelu` (exact, LAION/OpenCLIP) or `quick_gelu` (OpenAI).
    pub hidden_act: Activation,
    /// LayerNorm epsilon, 1e-5.
    pub layer_norm_eps: f64,
    /// The token whose final state is pooled (end of text, 49407). HF's legacy value 2 means
    /// "pool at the largest id", which for the CLIP BPE is the same first end-of-text token.
    pub eos_token_id: u32,
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
            eos_token_id: 49407,
        }
    }
}

/// The vision tower (`CLIPVisionConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClipVisionConfig {
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP's hidden layer.
    pub intermediate_size: usize,
    /// Number of transformer layers.
    pub num_hidden_layers: usize,
    /// Number of attention heads (`hidden_size` must be a multiple).
    pub num_attention_heads: usize,
    /// Input channels, 3.
    pub num_channels: usize,
    /// Input side in pixels, 224.
    pub image_size: usize,
    /// Patch side in pixels (14 or 32); must divide `image_size`.
    pub patch_size: usize,
    /// `gelu` (exact) or `quick_gelu`.
    pub hidden_act: Activation,
    /// LayerNorm epsilon, 1e-5.
    pub layer_norm_eps: f64,
}

impl Default for ClipVisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
        }
    }
}

impl ClipVisionConfig {
    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Tokens per image: the patches plus the class token.
    pub fn num_positions(&self) -> usize {
        self.grid() * self.grid() + 1
    }
}

/// The dual encoder (`CLIPConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClipConfig {
    /// Text tower.
    pub text_config: ClipTextConfig,
    /// Vision tower.
    pub vision_config: ClipVisionConfig,
    /// Width of the shared embedding space.
    pub projection_dim: usize,
    /// Initial `logit_scale` for new models (ln(1/0.07)); loaded models read theirs.
    pub logit_scale_init_value: f64,
}

impl Default for ClipConfig {
    fn default() -> Self {
        Self::vit_b_32()
    }
}

impl ClipConfig {
    /// OpenAI ViT-B/32 (HF `openai/clip-vit-base-patch32`), QuickGELU.
    pub fn vit_b_32() -> Self {
        Self {
            text_config: ClipTextConfig::default(),
            vision_config: ClipVisionConfig::default(),
            projection_dim: 512,
            logit_scale_init_value: 2.6592,
        }
    }

    /// OpenAI ViT-L/14 (HF `openai/clip-vit-large-patch14`), QuickGELU: the LAION aesthetic
    /// backbone and the usual CLIP-score model.
    pub fn vit_l_14() -> Self {
        Self {
            text_config: ClipTextConfig {
                hidden_size: 768,
                intermediate_size: 3072,
                num_attention_heads: 12,
                ..ClipTextConfig::default()
            },
            vision_config: ClipVisionConfig {
                hidden_size: 1024,
                intermediate_size: 4096,
                num_hidden_layers: 24,
                num_attention_heads: 16,
                patch_size: 14,
                ..ClipVisionConfig::default()
            },
            projection_dim: 768,
            logit_scale_init_value: 2.6592,
        }
    }

    /// LAION/OpenCLIP ViT-H/14 (PickScore_v1, HPSv2), exact GELU in both towers.
    pub fn vit_h_14() -> Self {
        Self {
            text_config: ClipTextConfig {
                hidden_size: 1024,
                intermediate_size: 4096,
                num_hidden_layers: 24,
                num_attention_heads: 16,
                hidden_act: Activation::Gelu,
                ..ClipTextConfig::default()
            },
            vision_config: ClipVisionConfig {
                hidden_size: 1280,
                intermediate_size: 5120,
                num_hidden_layers: 32,
                num_attention_heads: 16,
                patch_size: 14,
                hidden_act: Activation::Gelu,
                ..ClipVisionConfig::default()
            },
            projection_dim: 1024,
            logit_scale_init_value: 2.6592,
        }
    }

    /// Reads an HF `config.json` and checks that it describes a buildable model.
    pub fn from_file(path: &Path) -> Result<Self, ClipError> {
        let text = std::fs::read_to_string(path).map_err(|source| ClipError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg = Self::from_json(&text).map_err(|message| ClipError::Config {
            path: path.to_path_buf(),
            message,
        })?;
        cfg.validate().map_err(|message| ClipError::Config {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(cfg)
    }

    /// Parses a `config.json`. Configs written by transformers 4.x before 4.28 may carry
    /// `text_config_dict` / `vision_config_dict`, which take precedence over `text_config` /
    /// `vision_config` there; their fields are merged over the latter here too.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let mut value: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if let Some(root) = value.as_object_mut() {
            for tower in ["text", "vision"] {
                let Some(serde_json::Value::Object(overrides)) =
                    root.remove(&format!("{tower}_config_dict"))
                else {
                    continue;
                };
                let base = root
                    .entry(format!("{tower}_config"))
                    .or_insert_with(|| serde_json::Value::Object(Default::default()));
                if let Some(base) = base.as_object_mut() {
                    base.extend(overrides);
                }
            }
        }
        serde_json::from_value(value).map_err(|e| e.to_string())
    }

    /// Divisibility checks the towers rely on.
    pub fn validate(&self) -> Result<(), String> {
        let t = &self.text_config;
        let v = &self.vision_config;
        if t.num_attention_heads == 0 || !t.hidden_size.is_multiple_of(t.num_attention_heads) {
            return Err(format!(
                "text hidden_size {} is not a multiple of num_attention_heads {}",
                t.hidden_size, t.num_attention_heads
            ));
        }
        if v.num_attention_heads == 0 || !v.hidden_size.is_multiple_of(v.num_attention_heads) {
            return Err(format!(
                "vision hidden_size {} is not a multiple of num_attention_heads {}",
                v.hidden_size, v.num_attention_heads
            ));
        }
        if v.patch_size == 0 || !v.image_size.is_multiple_of(v.patch_size) {
            return Err(format!(
                "vision image_size {} is not a multiple of patch_size {}",
                v.image_size, v.patch_size
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_config_json_with_unknown_fields_deserialises() {
        let json = r#"{"projection_dim": 8, "model_type": "clip",
            "text_config": {"hidden_size": 8, "hidden_act": "gelu", "pad_token_id": 1},
            "vision_config": {"patch_size": 14, "hidden_act": "quick_gelu"}}"#;
        let cfg: ClipConfig = serde_json::from_str(json).expect("valid config");
        assert_eq!(cfg.projection_dim, 8);
        assert_eq!(cfg.text_config.hidden_size, 8);
        assert_eq!(cfg.text_config.hidden_act, Activation::Gelu);
        assert_eq!(cfg.text_config.vocab_size, 49408);
        assert_eq!(cfg.vision_config.num_positions(), 257);
        assert_eq!(cfg.vision_config.hidden_act, Activation::QuickGelu);
    }

    #[test]
    fn legacy_config_dicts_override_the_tower_configs() {
        let json = r#"{"projection_dim": 1024,
            "text_config": {"hidden_size": 512, "hidden_act": "quick_gelu"},
            "text_config_dict": {"hidden_size": 1024, "hidden_act": "gelu"},
            "vision_config_dict": {"hidden_size": 1280, "patch_size": 14}}"#;
        let cfg = ClipConfig::from_json(json).expect("valid legacy config");
        assert_eq!(cfg.text_config.hidden_size, 1024);
        assert_eq!(cfg.text_config.hidden_act, Activation::Gelu);
        assert_eq!(cfg.vision_config.hidden_size, 1280);
        assert_eq!(cfg.vision_config.patch_size, 14);
        assert!(ClipConfig::from_json("{").is_err());
    }

    #[test]
    fn presets_are_valid_and_h14_uses_exact_gelu() {
        for cfg in [
            ClipConfig::vit_b_32(),
            ClipConfig::vit_l_14(),
            ClipConfig::vit_h_14(),
        ] {
            assert_eq!(cfg.validate(), Ok(()));
        }
        let h = ClipConfig::vit_h_14();
        assert_eq!(h.vision_config.num_positions(), 257);
        assert_eq!(h.text_config.hidden_act, Activation::Gelu);
        assert_eq!(ClipConfig::vit_b_32().vision_config.num_positions(), 50);
    }

    #[test]
    fn indivisible_heads_are_rejected() {
        let mut cfg = ClipConfig::vit_b_32();
        cfg.vision_config.num_attention_heads = 7;
        assert!(cfg.validate().is_err());
    }
}
