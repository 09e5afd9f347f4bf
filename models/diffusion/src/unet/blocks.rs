//! The UNet's down, mid and up blocks (`src/diffusers/models/unets/unet_2d_blocks.py`):
//! `CrossAttnDownBlock2D`/`DownBlock2D`, `UNetMidBlock2DCrossAttn`,
//! `CrossAttnUpBlock2D`/`UpBlock2D`, with `Downsample2D` and `Upsample2D`.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;
use spo_nn::checkpoint::Segments;
use spo_nn::{Conv2d, Conv2dSpec, upsample::upsample_nearest2x};

use crate::attention::Attention;
use crate::error::{Result, into_candle};
use crate::resnet::{ResnetBlock2D, ResnetSpec};
use crate::unet::transformer::{Transformer2DModel, Transformer2DSpec};

/// What every block of one UNet shares.
#[derive(Debug, Clone, Copy)]
pub struct BlockCommon {
    /// Width of the time embedding.
    pub temb_channels: usize,
    /// GroupNorm groups.
    pub groups: usize,
    /// ResNet GroupNorm ε.
    pub eps: f64,
    /// Width of the text states.
    pub cross_attention_dim: usize,
    /// Linear `proj_in`/`proj_out` in transformers.
    pub use_linear_projection: bool,
}

impl BlockCommon {
    fn resnet(
        &self,
        in_channels: usize,
        out_channels: usize,
        vb: VarBuilder,
    ) -> Result<ResnetBlock2D> {
        let spec = ResnetSpec {
            in_channels,
            out_channels,
            temb_channels: Some(self.temb_channels),
            groups: self.groups,
            eps: self.eps,
            output_scale_factor: 1.0,
        };
        ResnetBlock2D::new(spec, vb)
    }

    fn transformer(
        &self,
        channels: usize,
        attn: AttnSpec,
        vb: VarBuilder,
    ) -> Result<Transformer2DModel> {
        let spec = Transformer2DSpec {
            channels,
            heads: attn.heads,
            layers: attn.layers,
            cross_attention_dim: self.cross_attention_dim,
            groups: self.groups,
            use_linear_projection: self.use_linear_projection,
        };
        Transformer2DModel::new(spec, vb)
    }
}

/// Cross-attention of one block: heads and transformer depth; `None` for plain blocks.
#[derive(Debug, Clone, Copy)]
pub struct AttnSpec {
    /// Attention heads.
    pub heads: usize,
    /// `BasicTransformerBlock`s per attention layer.
    pub layers: usize,
}

/// A down block: `layers` ResNets (each followed by a transformer in the cross-attention
/// variant) and an optional stride-2 conv.
#[derive(Debug, Clone)]
pub struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    downsampler: Option<Conv2d>,
}

/// Geometry of a [`DownBlock`] or [`UpBlock`].
#[derive(Debug, Clone, Copy)]
pub struct BlockSpec {
    /// Channels entering the block (down) / of the matching down block's input (up).
    pub in_channels: usize,
    /// Channels of the block's output.
    pub out_channels: usize,
    /// Channels coming out of the previous up block (up blocks only).
    pub prev_output_channels: usize,
    /// ResNets (down) or ResNets − 1 (up).
    pub layers: usize,
    /// Cross-attention, if any.
    pub attn: Option<AttnSpec>,
    /// Whether the block ends with a down/up sampler.
    pub resample: bool,
    /// Padding of the down sampler conv.
    pub downsample_padding: usize,
}

impl DownBlock {
    /// Loads or creates the block under `vb`.
    pub fn new(spec: BlockSpec, common: &BlockCommon, vb: VarBuilder) -> Result<Self> {
        let mut resnets = Vec::with_capacity(spec.layers);
        let mut attentions = Vec::new();
        for i in 0..spec.layers {
            let cin = if i == 0 {
                spec.in_channels
            } else {
                spec.out_channels
            };
            resnets.push(common.resnet(cin, spec.out_channels, vb.pp("resnets").pp(i))?);
            if let Some(attn) = spec.attn {
                attentions.push(common.transformer(
                    spec.out_channels,
                    attn,
                    vb.pp("attentions").pp(i),
                )?);
            }
        }
        let downsampler = if spec.resample {
            let conv = Conv2dSpec {
                in_channels: spec.out_channels,
                out_channels: spec.out_channels,
                kernel: 3,
                stride: 2,
                padding: spec.downsample_padding,
            };
            Some(Conv2d::new(conv, vb.pp("downsamplers").pp(0).pp("conv"))?)
        } else {
            None
        };
        Ok(Self {
            resnets,
            attentions,
            downsampler,
        })
    }

    /// Every attention layer of the block.
    pub fn attentions_mut(&mut self) -> Vec<&mut Attention> {
        self.attentions
            .iter_mut()
            .flat_map(|t| t.attentions_mut())
            .collect()
    }

    /// Every attention layer of the block.
    pub fn attentions(&self) -> Vec<&Attention> {
        self.attentions
            .iter()
            .flat_map(|t| t.attentions())
            .collect()
    }

    /// Returns the output and the skip states (one per ResNet, plus one after downsampling),
    /// each ResNet, transformer block and sampler a segment of `segs`.
    pub fn forward<'a>(
        &'a self,
        segs: &mut impl Segments<'a>,
        xs: &Tensor,
        temb: &Tensor,
        context: &Tensor,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let mut hs = xs.clone();
        let mut skips = Vec::with_capacity(self.resnets.len() + 1);
        for (i, resnet) in self.resnets.iter().enumerate() {
            hs = resnet_segment(segs, resnet, &[hs], temb)?;
            if let Some(attn) = self.attentions.get(i) {
                hs = attn.forward(segs, &hs, context)?;
            }
            skips.push(hs.clone());
        }
        if let Some(down) = &self.downsampler {
            hs = segs.run_one(&[hs], move |xs| down.forward(&xs[0]))?;
            skips.push(hs.clone());
        }
        Ok((hs, skips))
    }
}

/// A ResNet as one segment: its input is `parts` concatenated along channels (an up block's
/// state and skip), conditioned on `temb`.
fn resnet_segment<'a>(
    segs: &mut impl Segments<'a>,
    resnet: &'a ResnetBlock2D,
    parts: &[Tensor],
    temb: &Tensor,
) -> Result<Tensor> {
    let mut inputs = vec![temb.clone()];
    inputs.extend_from_slice(parts);
    Ok(segs.run_one(&inputs, move |xs| {
        let hs = match &xs[1..] {
            [one] => one.clone(),
            parts => Tensor::cat(parts, 1)?,
        };
        resnet.forward(&hs, Some(&xs[0])).map_err(into_candle)
    })?)
}

/// `UNetMidBlock2DCrossAttn`: ResNet, then (transformer, ResNet) pairs.
#[derive(Debug, Clone)]
pub struct MidBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
}

impl MidBlock {
    /// Loads or creates the block under `vb` (one transformer of `attn.layers` blocks).
    pub fn new(
        channels: usize,
        attn: AttnSpec,
        common: &BlockCommon,
        scale: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        let resnet = |i: usize| -> Result<ResnetBlock2D> {
            let spec = ResnetSpec {
                in_channels: channels,
                out_channels: channels,
                temb_channels: Some(common.temb_channels),
                groups: common.groups,
                eps: common.eps,
                output_scale_factor: scale,
            };
            ResnetBlock2D::new(spec, vb.pp("resnets").pp(i))
        };
        Ok(Self {
            resnets: vec![resnet(0)?, resnet(1)?],
            attentions: vec![common.transformer(channels, attn, vb.pp("attentions").pp(0))?],
        })
    }

    /// Every attention layer of the block.
    pub fn attentions_mut(&mut self) -> Vec<&mut Attention> {
        self.attentions
            .iter_mut()
            .flat_map(|t| t.attentions_mut())
            .collect()
    }

    /// Every attention layer of the block.
    pub fn attentions(&self) -> Vec<&Attention> {
        self.attentions
            .iter()
            .flat_map(|t| t.attentions())
            .collect()
    }

    /// `(b, c, h, w) → (b, c, h, w)`, each ResNet and transformer block a segment of `segs`.
    pub fn forward<'a>(
        &'a self,
        segs: &mut impl Segments<'a>,
        xs: &Tensor,
        temb: &Tensor,
        context: &Tensor,
    ) -> Result<Tensor> {
        let mut hs = resnet_segment(segs, &self.resnets[0], std::slice::from_ref(xs), temb)?;
        for (attn, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            hs = attn.forward(segs, &hs, context)?;
            hs = resnet_segment(segs, resnet, &[hs], temb)?;
        }
        Ok(hs)
    }
}

/// An up block: `layers + 1` ResNets over the input concatenated with a skip state (each
/// followed by a transformer in the cross-attention variant), then an optional ×2 nearest
/// upsampling and 3×3 conv.
#[derive(Debug, Clone)]
pub struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    upsampler: Option<Conv2d>,
}

impl UpBlock {
    /// Loads or creates the block under `vb`.
    pub fn new(spec: BlockSpec, common: &BlockCommon, vb: VarBuilder) -> Result<Self> {
        let n = spec.layers + 1;
        let mut resnets = Vec::with_capacity(n);
        let mut attentions = Vec::new();
        for i in 0..n {
            let skip = if i == n - 1 {
                spec.in_channels
            } else {
                spec.out_channels
            };
            let cin = if i == 0 {
                spec.prev_output_channels
            } else {
                spec.out_channels
            };
            resnets.push(common.resnet(cin + skip, spec.out_channels, vb.pp("resnets").pp(i))?);
            if let Some(attn) = spec.attn {
                attentions.push(common.transformer(
                    spec.out_channels,
                    attn,
                    vb.pp("attentions").pp(i),
                )?);
            }
        }
        let upsampler = if spec.resample {
            let conv = Conv2dSpec::same(spec.out_channels, spec.out_channels, 3);
            Some(Conv2d::new(conv, vb.pp("upsamplers").pp(0).pp("conv"))?)
        } else {
            None
        };
        Ok(Self {
            resnets,
            attentions,
            upsampler,
        })
    }

    /// Number of skip states the block consumes.
    pub fn skips_needed(&self) -> usize {
        self.resnets.len()
    }

    /// Every attention layer of the block.
    pub fn attentions_mut(&mut self) -> Vec<&mut Attention> {
        self.attentions
            .iter_mut()
            .flat_map(|t| t.attentions_mut())
            .collect()
    }

    /// Every attention layer of the block.
    pub fn attentions(&self) -> Vec<&Attention> {
        self.attentions
            .iter()
            .flat_map(|t| t.attentions())
            .collect()
    }

    /// `skips` are consumed last-first, as diffusers pops `res_hidden_states_tuple[-1]`; each
    /// ResNet (with its skip), transformer block and sampler is a segment of `segs`.
    pub fn forward<'a>(
        &'a self,
        segs: &mut impl Segments<'a>,
        xs: &Tensor,
        skips: &[Tensor],
        temb: &Tensor,
        context: &Tensor,
    ) -> Result<Tensor> {
        let mut hs = xs.clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            let skip = skips[skips.len() - 1 - i].clone();
            hs = resnet_segment(segs, resnet, &[hs, skip], temb)?;
            if let Some(attn) = self.attentions.get(i) {
                hs = attn.forward(segs, &hs, context)?;
            }
        }
        if let Some(conv) = &self.upsampler {
            hs = segs.run_one(&[hs], move |xs| conv.forward(&upsample_nearest2x(&xs[0])?))?;
        }
        Ok(hs)
    }
}
