//! The config of diffusers' `UNet2DConditionModel` (`unet/config.json`), field names as there.
//!
//! A real SD 1.5 or SDXL `config.json` deserialises as is; fields this implementation does not
//! use must hold diffusers' defaults, which [`UNet2DConditionConfig::validate`] checks and
//! reports by name.

use serde::{Deserialize, Serialize};

use crate::error::{DiffusionError, Result};
use spo_nn::Activation;

/// A per-block value: one number for every block, or one per block (diffusers accepts both).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PerBlock {
    /// The same value for every block.
    All(usize),
    /// One value per down block (in down order).
    Each(Vec<usize>),
}

impl PerBlock {
    /// One value per block, checked against the block count.
    pub fn resolve(&self, field: &str, blocks: usize) -> Result<Vec<usize>> {
        match self {
            Self::All(v) => Ok(vec![*v; blocks]),
            Self::Each(v) if v.len() == blocks => Ok(v.clone()),
            Self::Each(v) => Err(DiffusionError::Unsupported {
                field: field.into(),
                value: format!("{v:?}"),
                hint: format!("needs one value per block ({blocks})"),
            }),
        }
    }
}

fn d_true() -> bool {
    true
}
fn d_four() -> usize {
    4
}
fn d_two() -> PerBlock {
    PerBlock::All(2)
}
fn d_one() -> PerBlock {
    PerBlock::All(1)
}
fn d_heads() -> PerBlock {
    PerBlock::All(8)
}
fn d_usize_one() -> usize {
    1
}
fn d_groups() -> usize {
    32
}
fn d_eps() -> f64 {
    1e-5
}
fn d_cross() -> usize {
    1280
}
fn d_act() -> Activation {
    Activation::Silu
}
fn d_scale() -> f64 {
    1.0
}
fn d_kernel() -> usize {
    3
}
fn d_mid() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}
fn d_default() -> String {
    "default".into()
}
fn d_positional() -> String {
    "positional".into()
}
fn d_down() -> Vec<String> {
    vec![
        "CrossAttnDownBlock2D".into(),
        "CrossAttnDownBlock2D".into(),
        "CrossAttnDownBlock2D".into(),
        "DownBlock2D".into(),
    ]
}
fn d_up() -> Vec<String> {
    vec![
        "UpBlock2D".into(),
        "CrossAttnUpBlock2D".into(),
        "CrossAttnUpBlock2D".into(),
        "CrossAttnUpBlock2D".into(),
    ]
}
fn d_channels() -> Vec<usize> {
    vec![320, 640, 1280, 1280]
}

/// `UNet2DConditionModel` config; serde defaults are diffusers' constructor defaults,
/// [`UNet2DConditionConfig::sd15`] is SD 1.5's `unet/config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UNet2DConditionConfig {
    /// Latent height/width the model was trained at (informational).
    #[serde(default)]
    pub sample_size: Option<usize>,
    /// Input latent channels (default 4).
    #[serde(default = "d_four")]
    pub in_channels: usize,
    /// Output channels (default 4).
    #[serde(default = "d_four")]
    pub out_channels: usize,
    /// Map the input x to 2x − 1 first (default false).
    #[serde(default)]
    pub center_input_sample: bool,
    /// Order the sinusoidal embedding as (cos, sin) (default true).
    #[serde(default = "d_true")]
    pub flip_sin_to_cos: bool,
    /// Frequency shift of the sinusoidal embedding (default 0).
    #[serde(default)]
    pub freq_shift: usize,
    /// `CrossAttnDownBlock2D` or `DownBlock2D`, one per resolution.
    #[serde(default = "d_down")]
    pub down_block_types: Vec<String>,
    /// `UNetMidBlock2DCrossAttn` (the only supported mid block).
    #[serde(default = "d_mid")]
    pub mid_block_type: Option<String>,
    /// `CrossAttnUpBlock2D` or `UpBlock2D`, one per resolution (coarsest first).
    #[serde(default = "d_up")]
    pub up_block_types: Vec<String>,
    /// Output channels of each down block (default 320, 640, 1280, 1280).
    #[serde(default = "d_channels")]
    pub block_out_channels: Vec<usize>,
    /// ResNet layers per down block (up blocks get one more) (default 2).
    #[serde(default = "d_two")]
    pub layers_per_block: PerBlock,
    /// Padding of the stride-2 downsampling convolutions (default 1).
    #[serde(default = "d_usize_one")]
    pub downsample_padding: usize,
    /// Output scale of the mid block's ResNets (default 1).
    #[serde(default = "d_scale")]
    pub mid_block_scale_factor: f64,
    /// Non-linearity of ResNets and the time MLP (default `silu`).
    #[serde(default = "d_act")]
    pub act_fn: Activation,
    /// GroupNorm groups (default 32).
    #[serde(default = "d_groups")]
    pub norm_num_groups: usize,
    /// GroupNorm ε of ResNets and the output norm (default 1e-5).
    #[serde(default = "d_eps")]
    pub norm_eps: f64,
    /// Width of the text-encoder states attended to (SD 1.5: 768; SDXL: 2048).
    #[serde(default = "d_cross")]
    pub cross_attention_dim: usize,
    /// Transformer blocks per attention layer, per down block (SDXL: 1, 2, 10).
    #[serde(default = "d_one")]
    pub transformer_layers_per_block: PerBlock,
    /// Historically misnamed: the number of heads when `num_attention_heads` is null (SD 1.5: 8;
    /// SDXL: 5, 10, 20).
    #[serde(default = "d_heads")]
    pub attention_head_dim: PerBlock,
    /// Number of heads per block; overrides `attention_head_dim` when given.
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock>,
    /// Linear (not 1×1 conv) `proj_in`/`proj_out` in transformers (SD 2, SDXL: true).
    #[serde(default)]
    pub use_linear_projection: bool,
    /// Upcast attention to f32 (SD 2.1); attention here always upcasts around softmax.
    #[serde(default)]
    pub upcast_attention: bool,
    /// `text_time` for SDXL's pooled-text + size conditioning; null otherwise.
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    /// Width of each sinusoidal embedding of SDXL's time ids (SDXL: 256).
    #[serde(default)]
    pub addition_time_embed_dim: Option<usize>,
    /// Input width of SDXL's `add_embedding` (pooled text + 6·256 = 2816).
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
    /// Kernel of `conv_in` (default 3).
    #[serde(default = "d_kernel")]
    pub conv_in_kernel: usize,
    /// Kernel of `conv_out` (default 3).
    #[serde(default = "d_kernel")]
    pub conv_out_kernel: usize,
    /// Only `default` is supported.
    #[serde(default = "d_default")]
    pub resnet_time_scale_shift: String,
    /// Only `positional` is supported.
    #[serde(default = "d_positional")]
    pub time_embedding_type: String,
    /// Only null is supported.
    #[serde(default)]
    pub class_embed_type: Option<String>,
    /// Only null is supported.
    #[serde(default)]
    pub encoder_hid_dim: Option<usize>,
    /// Only null is supported.
    #[serde(default)]
    pub num_class_embeds: Option<usize>,
    /// Only null is supported.
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
    /// Only false is supported.
    #[serde(default)]
    pub dual_cross_attention: bool,
    /// Only false is supported.
    #[serde(default)]
    pub only_cross_attention: serde_json::Value,
    /// Only null (time embedding width = 4 × first block width) is supported.
    #[serde(default)]
    pub time_embedding_dim: Option<usize>,
    /// Only null is supported.
    #[serde(default)]
    pub time_embedding_act_fn: Option<String>,
    /// Only null is supported.
    #[serde(default)]
    pub timestep_post_act: Option<String>,
    /// Only null (up blocks mirror `transformer_layers_per_block`) is supported.
    #[serde(default)]
    pub reverse_transformer_layers_per_block: Option<serde_json::Value>,
    /// Only null is supported.
    #[serde(default)]
    pub cross_attention_norm: Option<String>,
    /// Only `default` is supported.
    #[serde(default = "d_default")]
    pub attention_type: String,
    /// Only 1 is supported.
    #[serde(default = "d_scale")]
    pub resnet_out_scale_factor: f64,
    /// Only false is supported.
    #[serde(default)]
    pub resnet_skip_time_act: bool,
}

impl UNet2DConditionConfig {
    /// SD 1.5 (`runwayml/stable-diffusion-v1-5/unet/config.json`).
    pub fn sd15() -> Self {
        let mut cfg: Self = serde_json::from_str("{}").unwrap_or_else(|_| unreachable!());
        cfg.cross_attention_dim = 768;
        cfg.sample_size = Some(64);
        cfg
    }

    /// A CPU-sized model with SD 1.5's block layout (two resolutions, one cross-attention
    /// down/up block, 32/64 channels, 2 heads, text width 32).
    pub fn tiny() -> Self {
        Self {
            sample_size: Some(16),
            down_block_types: vec!["CrossAttnDownBlock2D".into(), "DownBlock2D".into()],
            up_block_types: vec!["UpBlock2D".into(), "CrossAttnUpBlock2D".into()],
            block_out_channels: vec![32, 64],
            layers_per_block: PerBlock::All(1),
            norm_num_groups: 8,
            cross_attention_dim: 32,
            attention_head_dim: PerBlock::All(2),
            ..Self::sd15()
        }
    }

    /// Number of heads per down block.
    pub fn heads(&self) -> Result<Vec<usize>> {
        let n = self.block_out_channels.len();
        match &self.num_attention_heads {
            Some(h) => h.resolve("num_attention_heads", n),
            None => self.attention_head_dim.resolve("attention_head_dim", n),
        }
    }

    /// Checks that every field holds a value this implementation computes faithfully.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, value: String, hint: &str| {
            Err(DiffusionError::Unsupported {
                field: field.into(),
                value,
                hint: hint.into(),
            })
        };
        let n = self.block_out_channels.len();
        if n == 0 || self.down_block_types.len() != n || self.up_block_types.len() != n {
            return bad(
                "down_block_types/up_block_types",
                format!(
                    "{}/{}",
                    self.down_block_types.len(),
                    self.up_block_types.len()
                ),
                "need one down and one up block per entry of block_out_channels",
            );
        }
        for t in &self.down_block_types {
            if t != "CrossAttnDownBlock2D" && t != "DownBlock2D" {
                return bad(
                    "down_block_types",
                    t.clone(),
                    "CrossAttnDownBlock2D or DownBlock2D",
                );
            }
        }
        for t in &self.up_block_types {
            if t != "CrossAttnUpBlock2D" && t != "UpBlock2D" {
                return bad(
                    "up_block_types",
                    t.clone(),
                    "CrossAttnUpBlock2D or UpBlock2D",
                );
            }
        }
        if self.mid_block_type.as_deref() != Some("UNetMidBlock2DCrossAttn") {
            return bad(
                "mid_block_type",
                format!("{:?}", self.mid_block_type),
                "UNetMidBlock2DCrossAttn",
            );
        }
        let heads = self.heads()?;
        for (i, (&c, &h)) in self.block_out_channels.iter().zip(&heads).enumerate() {
            if h == 0 || c % h != 0 || c % self.norm_num_groups != 0 {
                return bad(
                    "block_out_channels",
                    format!("{c} (block {i})"),
                    "must be divisible by its head count and by norm_num_groups",
                );
            }
        }
        self.layers_per_block.resolve("layers_per_block", n)?;
        self.transformer_layers_per_block
            .resolve("transformer_layers_per_block", n)?;
        let sdxl_dims = self.addition_time_embed_dim.is_some()
            && self.projection_class_embeddings_input_dim.is_some();
        match self.addition_embed_type.as_deref() {
            None => {}
            Some("text_time") if sdxl_dims => {}
            Some("text_time") => {
                return bad(
                    "addition_embed_type",
                    "text_time".into(),
                    "needs addition_time_embed_dim and projection_class_embeddings_input_dim",
                );
            }
            Some(other) => return bad("addition_embed_type", other.into(), "null or text_time"),
        }
        if self.resnet_time_scale_shift != "default" {
            return bad(
                "resnet_time_scale_shift",
                self.resnet_time_scale_shift.clone(),
                "default",
            );
        }
        if self.time_embedding_type != "positional" {
            return bad(
                "time_embedding_type",
                self.time_embedding_type.clone(),
                "positional",
            );
        }
        let nulls = [
            ("class_embed_type", self.class_embed_type.is_some()),
            ("encoder_hid_dim", self.encoder_hid_dim.is_some()),
            ("num_class_embeds", self.num_class_embeds.is_some()),
            ("time_cond_proj_dim", self.time_cond_proj_dim.is_some()),
            ("dual_cross_attention", self.dual_cross_attention),
            ("time_embedding_dim", self.time_embedding_dim.is_some()),
            (
                "time_embedding_act_fn",
                self.time_embedding_act_fn.is_some(),
            ),
            ("timestep_post_act", self.timestep_post_act.is_some()),
            (
                "reverse_transformer_layers_per_block",
                self.reverse_transformer_layers_per_block.is_some(),
            ),
            ("cross_attention_norm", self.cross_attention_norm.is_some()),
            ("attention_type", self.attention_type != "default"),
            (
                "resnet_out_scale_factor",
                self.resnet_out_scale_factor != 1.0,
            ),
            ("resnet_skip_time_act", self.resnet_skip_time_act),
            (
                "only_cross_attention",
                !matches!(
                    self.only_cross_attention,
                    serde_json::Value::Null | serde_json::Value::Bool(false)
                ),
            ),
        ];
        for (field, set) in nulls {
            if set {
                return bad(
                    field,
                    "set".into(),
                    "only diffusers' default (null/false) is supported",
                );
            }
        }
        if self.conv_in_kernel.is_multiple_of(2) || self.conv_out_kernel.is_multiple_of(2) {
            return bad(
                "conv_in_kernel/conv_out_kernel",
                "even".into(),
                "odd kernels only",
            );
        }
        Ok(())
    }
}

impl Default for UNet2DConditionConfig {
    fn default() -> Self {
        Self::sd15()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sd15_and_sdxl_configs_parse_and_validate() -> Result<()> {
        let sd15 = r#"{"_class_name": "UNet2DConditionModel", "_diffusers_version": "0.6.0",
          "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
          "center_input_sample": false, "cross_attention_dim": 768,
          "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
          "downsample_padding": 1, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4,
          "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
          "out_channels": 4, "sample_size": 64,
          "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]}"#;
        let parsed: UNet2DConditionConfig =
            serde_json::from_str(sd15).map_err(|source| DiffusionError::Json {
                path: "sd15".into(),
                source,
            })?;
        assert_eq!(parsed, UNet2DConditionConfig::sd15());
        parsed.validate()?;
        let sdxl = r#"{"addition_embed_type": "text_time", "addition_time_embed_dim": 256,
          "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280],
          "cross_attention_dim": 2048, "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
          "projection_class_embeddings_input_dim": 2816, "transformer_layers_per_block": [1, 2, 10],
          "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
          "use_linear_projection": true, "sample_size": 128}"#;
        let xl: UNet2DConditionConfig =
            serde_json::from_str(sdxl).map_err(|source| DiffusionError::Json {
                path: "sdxl".into(),
                source,
            })?;
        xl.validate()?;
        assert_eq!(xl.heads()?, vec![5, 10, 20]);
        UNet2DConditionConfig::tiny().validate()
    }

    #[test]
    fn unsupported_field_is_named() {
        let cfg = UNet2DConditionConfig {
            class_embed_type: Some("timestep".into()),
            ..UNet2DConditionConfig::tiny()
        };
        let msg = cfg
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains("class_embed_type"), "{msg}");
    }
}
