//! diffusers' `ResnetBlock2D` (`src/diffusers/models/resnet.py`), shared by the UNet and the VAE.
//!
//! `out = (shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))) + proj(silu(temb))))) / s`,
//! with `proj` (`time_emb_proj`) present only when the block takes a time embedding (UNet) and
//! `shortcut` a 1×1 conv (`conv_shortcut`) only when the channel count changes.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;
use spo_nn::{Conv2d, Conv2dSpec, GroupNorm, linear::linear};

use crate::error::Result;

/// Geometry of a [`ResnetBlock2D`].
#[derive(Debug, Clone, Copy)]
pub struct ResnetSpec {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Width of the time embedding; `None` for the VAE.
    pub temb_channels: Option<usize>,
    /// GroupNorm groups.
    pub groups: usize,
    /// GroupNorm ε.
    pub eps: f64,
    /// Divides the output (`output_scale_factor`, 1 except SD's mid block config knob).
    pub output_scale_factor: f64,
}

/// Two GroupNorm–SiLU–conv stages with a residual connection.
#[derive(Debug, Clone)]
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<candle_nn::Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    output_scale_factor: f64,
}

impl ResnetBlock2D {
    /// Loads or creates the block's weights under `vb`.
    pub fn new(spec: ResnetSpec, vb: VarBuilder) -> Result<Self> {
        let (cin, cout) = (spec.in_channels, spec.out_channels);
        let norm1 = GroupNorm::new(spec.groups, cin, spec.eps, vb.pp("norm1"))?;
        let conv1 = Conv2d::new(Conv2dSpec::same(cin, cout, 3), vb.pp("conv1"))?;
        let time_emb_proj = match spec.temb_channels {
            Some(t) => Some(linear(t, cout, vb.pp("time_emb_proj"))?),
            None => None,
        };
        let norm2 = GroupNorm::new(spec.groups, cout, spec.eps, vb.pp("norm2"))?;
        let conv2 = Conv2d::new(Conv2dSpec::same(cout, cout, 3), vb.pp("conv2"))?;
        let conv_shortcut = if cin != cout {
            Some(Conv2d::new(
                Conv2dSpec::same(cin, cout, 1),
                vb.pp("conv_shortcut"),
            )?)
        } else {
            None
        };
        Ok(Self {
            norm1,
            conv1,
            time_emb_proj,
            norm2,
            conv2,
            conv_shortcut,
            output_scale_factor: spec.output_scale_factor,
        })
    }

    /// `xs: (b, in, h, w)`, `temb: (b, temb_channels)` when the block has a time projection.
    pub fn forward(&self, xs: &Tensor, temb: Option<&Tensor>) -> Result<Tensor> {
        // 1. first norm–act–conv, 2. plus the projected time embedding, broadcast over space
        // (added through conv1's bias, one per image)
        let shift = match (&self.time_emb_proj, temb) {
            (Some(proj), Some(temb)) => Some(proj.forward(&temb.silu()?)?),
            _ => None,
        };
        let hs = self
            .conv1
            .forward_after_norm_silu(&self.norm1, xs, shift.as_ref())?;
        // 3. second norm–act–conv (dropout is the identity at p = 0)
        let hs = self.conv2.forward_after_norm_silu(&self.norm2, &hs, None)?;
        // 4. residual
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(xs)?,
            None => xs.clone(),
        };
        let out = (shortcut + hs)?;
        if self.output_scale_factor == 1.0 {
            Ok(out)
        } else {
            Ok((out / self.output_scale_factor)?)
        }
    }
}
