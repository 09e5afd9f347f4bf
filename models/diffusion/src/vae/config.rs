//! The config of diffusers' `AutoencoderKL` (`vae/config.json`), field names as there.

use serde::{Deserialize, Serialize};

use crate::error::{DiffusionError, Result};
use spo_nn::Activation;

fn d_three() -> usize {
    3
}
fn d_four() -> usize {
    4
}
fn d_one() -> usize {
    1
}
fn d_groups() -> usize {
    32
}
fn d_true() -> bool {
    true
}
fn d_act() -> Activation {
    Activation::Silu
}
fn d_scaling() -> f64 {
    0.18215
}
fn d_down() -> Vec<String> {
    vec!["DownEncoderBlock2D".into(); 4]
}
fn d_up() -> Vec<String> {
    vec!["UpDecoderBlock2D".into(); 4]
}
fn d_channels() -> Vec<usize> {
    vec![128, 256, 512, 512]
}

/// `AutoencoderKL` config; [`AutoencoderKLConfig::sd15`] is SD 1.5's `vae/config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoencoderKLConfig {
    /// Image channels in (default 3).
    #[serde(default = "d_three")]
    pub in_channels: usize,
    /// Image channels out (default 3).
    #[serde(default = "d_three")]
    pub out_channels: usize,
    /// `DownEncoderBlock2D`, one per resolution.
    #[serde(default = "d_down")]
    pub down_block_types: Vec<String>,
    /// `UpDecoderBlock2D`, one per resolution.
    #[serde(default = "d_up")]
    pub up_block_types: Vec<String>,
    /// Channels per resolution, finest first (SD: 128, 256, 512, 512).
    #[serde(default = "d_channels")]
    pub block_out_channels: Vec<usize>,
    /// ResNets per encoder block (decoder blocks get one more) (SD: 2).
    #[serde(default = "d_one")]
    pub layers_per_block: usize,
    /// Non-linearity (default `silu`).
    #[serde(default = "d_act")]
    pub act_fn: Activation,
    /// Latent channels (default 4).
    #[serde(default = "d_four")]
    pub latent_channels: usize,
    /// GroupNorm groups (default 32).
    #[serde(default = "d_groups")]
    pub norm_num_groups: usize,
    /// Image size the model was trained at (informational).
    #[serde(default)]
    pub sample_size: Option<usize>,
    /// Latents are `scaling_factor · z` for the UNet (SD 1.5: 0.18215; SDXL: 0.13025).
    #[serde(default = "d_scaling")]
    pub scaling_factor: f64,
    /// Subtracted before scaling (SD3/Flux); only null is supported.
    #[serde(default)]
    pub shift_factor: Option<f64>,
    /// Self-attention in the mid blocks (default true).
    #[serde(default = "d_true")]
    pub mid_block_add_attention: bool,
    /// 1×1 `quant_conv` after the encoder (default true).
    #[serde(default = "d_true")]
    pub use_quant_conv: bool,
    /// 1×1 `post_quant_conv` before the decoder (default true).
    #[serde(default = "d_true")]
    pub use_post_quant_conv: bool,
    /// Run in f32 when the pipeline is in half precision (default true: SD's VAE overflows in
    /// f16; `madebyollin/sdxl-vae-fp16-fix` says false), as diffusers' pipelines upcast it.
    #[serde(default = "d_true")]
    pub force_upcast: bool,
}

impl AutoencoderKLConfig {
    /// SD 1.5 (`runwayml/stable-diffusion-v1-5/vae/config.json`).
    pub fn sd15() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            down_block_types: d_down(),
            up_block_types: d_up(),
            block_out_channels: d_channels(),
            layers_per_block: 2,
            act_fn: Activation::Silu,
            latent_channels: 4,
            norm_num_groups: 32,
            sample_size: Some(512),
            scaling_factor: 0.18215,
            shift_factor: None,
            mid_block_add_attention: true,
            use_quant_conv: true,
            use_post_quant_conv: true,
            force_upcast: true,
        }
    }

    /// Checks the block types and channel divisibility.
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
                "need one block per entry of block_out_channels",
            );
        }
        if let Some(t) = self
            .down_block_types
            .iter()
            .find(|t| *t != "DownEncoderBlock2D")
        {
            return bad("down_block_types", t.clone(), "DownEncoderBlock2D");
        }
        if let Some(t) = self
            .up_block_types
            .iter()
            .find(|t| *t != "UpDecoderBlock2D")
        {
            return bad("up_block_types", t.clone(), "UpDecoderBlock2D");
        }
        if let Some(c) = self
            .block_out_channels
            .iter()
            .find(|c| !c.is_multiple_of(self.norm_num_groups))
        {
            return bad(
                "block_out_channels",
                c.to_string(),
                "must be divisible by norm_num_groups",
            );
        }
        if self.act_fn != Activation::Silu {
            return bad("act_fn", format!("{:?}", self.act_fn), "silu");
        }
        if self.shift_factor.is_some() {
            return bad("shift_factor", "set".into(), "null");
        }
        Ok(())
    }
}

impl Default for AutoencoderKLConfig {
    fn default() -> Self {
        Self::sd15()
    }
}
