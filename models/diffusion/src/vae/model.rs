//! diffusers' `AutoencoderKL` (`src/diffusers/models/autoencoders/autoencoder_kl.py`, `vae.py`):
//! encoder to a diagonal Gaussian over latents, decoder back to pixels.
//!
//! candle-transformers' VAE hides the posterior mean and samples with unseeded noise; here
//! [`AutoencoderKL::encode`] returns mean and std, and sampling takes caller noise.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;
use spo_nn::{Conv2d, Conv2dSpec, GroupNorm, upsample::upsample_nearest2x};

use crate::attention::{Attention, AttentionSpec};
use crate::error::Result;
use crate::resnet::{ResnetBlock2D, ResnetSpec};
use crate::vae::config::AutoencoderKLConfig;

const EPS: f64 = 1e-6;

fn resnet(cin: usize, cout: usize, groups: usize, vb: VarBuilder) -> Result<ResnetBlock2D> {
    let spec = ResnetSpec {
        in_channels: cin,
        out_channels: cout,
        temb_channels: None,
        groups,
        eps: EPS,
        output_scale_factor: 1.0,
    };
    ResnetBlock2D::new(spec, vb)
}

/// Single-head spatial self-attention with GroupNorm and a residual (`UNetMidBlock2D`'s).
#[derive(Debug, Clone)]
struct SpatialAttention {
    group_norm: GroupNorm,
    attn: Attention,
}

impl SpatialAttention {
    fn new(channels: usize, groups: usize, vb: VarBuilder) -> Result<Self> {
        let spec = AttentionSpec {
            query_dim: channels,
            cross_attention_dim: None,
            heads: 1,
            dim_head: channels,
            bias: true,
        };
        Ok(Self {
            group_norm: GroupNorm::new(groups, channels, EPS, vb.pp("group_norm"))?,
            attn: Attention::new(spec, vb)?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = xs.dims4()?;
        // (b, h·w, c) tokens of the normalised map; contiguous, because candle 0.11.1's Linear
        // returns wrong values for transposed batched inputs (see spo_nn::linear)
        let tokens = self
            .group_norm
            .forward(xs)?
            .reshape((b, c, h * w))?
            .transpose(1, 2)?
            .contiguous()?;
        let out = self.attn.forward(&tokens, None)?;
        let out = out.transpose(1, 2)?.reshape((b, c, h, w))?;
        Ok((out + xs)?)
    }
}

/// `UNetMidBlock2D` without time embedding: ResNet, attention, ResNet.
#[derive(Debug, Clone)]
struct MidBlock {
    resnets: [ResnetBlock2D; 2],
    attention: Option<SpatialAttention>,
}

impl MidBlock {
    fn new(channels: usize, groups: usize, attention: bool, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            resnets: [
                resnet(channels, channels, groups, vb.pp("resnets").pp(0))?,
                resnet(channels, channels, groups, vb.pp("resnets").pp(1))?,
            ],
            attention: if attention {
                Some(SpatialAttention::new(
                    channels,
                    groups,
                    vb.pp("attentions").pp(0),
                )?)
            } else {
                None
            },
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut hs = self.resnets[0].forward(xs, None)?;
        if let Some(attn) = &self.attention {
            hs = attn.forward(&hs)?;
        }
        self.resnets[1].forward(&hs, None)
    }
}

/// A stack of ResNets with an optional resampling conv (`DownEncoderBlock2D`/`UpDecoderBlock2D`).
#[derive(Debug, Clone)]
struct CodecBlock {
    resnets: Vec<ResnetBlock2D>,
    resample: Option<Conv2d>,
}

impl CodecBlock {
    fn new(
        cin: usize,
        cout: usize,
        layers: usize,
        groups: usize,
        down: Option<bool>,
        vb: VarBuilder,
    ) -> Result<Self> {
        let resnets = (0..layers)
            .map(|j| {
                resnet(
                    if j == 0 { cin } else { cout },
                    cout,
                    groups,
                    vb.pp("resnets").pp(j),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let resample = match down {
            // Downsample2D(padding=0): zero-pad right and bottom by one, then stride 2
            Some(true) => Some(Conv2d::new(
                Conv2dSpec {
                    in_channels: cout,
                    out_channels: cout,
                    kernel: 3,
                    stride: 2,
                    padding: 0,
                },
                vb.pp("downsamplers").pp(0).pp("conv"),
            )?),
            Some(false) => Some(Conv2d::new(
                Conv2dSpec::same(cout, cout, 3),
                vb.pp("upsamplers").pp(0).pp("conv"),
            )?),
            None => None,
        };
        Ok(Self { resnets, resample })
    }

    fn forward(&self, xs: &Tensor, down: bool) -> Result<Tensor> {
        let mut hs = xs.clone();
        for r in &self.resnets {
            hs = r.forward(&hs, None)?;
        }
        match (&self.resample, down) {
            (Some(conv), true) => {
                Ok(conv.forward(&hs.pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 0, 1)?)?)
            }
            (Some(conv), false) => Ok(conv.forward(&upsample_nearest2x(&hs)?)?),
            (None, _) => Ok(hs),
        }
    }
}

/// The posterior q(z | x) = N(mean, std²) of the encoder.
#[derive(Debug, Clone)]
pub struct LatentDistribution {
    /// Posterior mean, `(b, latent, h/f, w/f)`.
    pub mean: Tensor,
    /// Posterior standard deviation, `exp(½·clamp(logvar, −30, 20))`.
    pub std: Tensor,
}

impl LatentDistribution {
    /// `mean + std·noise` with caller-supplied (seeded) standard normal noise.
    pub fn sample(&self, noise: &Tensor) -> Result<Tensor> {
        Ok((&self.mean + (&self.std * noise)?)?)
    }
}

/// The Stable Diffusion VAE.
#[derive(Debug, Clone)]
pub struct AutoencoderKL {
    config: AutoencoderKLConfig,
    enc_conv_in: Conv2d,
    enc_blocks: Vec<CodecBlock>,
    enc_mid: MidBlock,
    enc_norm_out: GroupNorm,
    enc_conv_out: Conv2d,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    dec_conv_in: Conv2d,
    dec_mid: MidBlock,
    dec_blocks: Vec<CodecBlock>,
    dec_norm_out: GroupNorm,
    dec_conv_out: Conv2d,
}

impl AutoencoderKL {
    /// Builds the VAE from `config`, loading (or creating) every weight under `vb`.
    pub fn new(config: &AutoencoderKLConfig, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        let ch = &config.block_out_channels;
        let (n, g, lat) = (ch.len(), config.norm_num_groups, config.latent_channels);
        let (enc, dec) = (vb.pp("encoder"), vb.pp("decoder"));

        // 1. encoder
        let enc_conv_in = Conv2d::new(
            Conv2dSpec::same(config.in_channels, ch[0], 3),
            enc.pp("conv_in"),
        )?;
        let mut enc_blocks = Vec::with_capacity(n);
        let mut out = ch[0];
        for (i, &c) in ch.iter().enumerate() {
            let cin = out;
            out = c;
            let down = (i + 1 < n).then_some(true);
            enc_blocks.push(CodecBlock::new(
                cin,
                out,
                config.layers_per_block,
                g,
                down,
                enc.pp("down_blocks").pp(i),
            )?);
        }
        let enc_mid = MidBlock::new(
            ch[n - 1],
            g,
            config.mid_block_add_attention,
            enc.pp("mid_block"),
        )?;
        let enc_norm_out = GroupNorm::new(g, ch[n - 1], EPS, enc.pp("conv_norm_out"))?;
        let enc_conv_out =
            Conv2d::new(Conv2dSpec::same(ch[n - 1], 2 * lat, 3), enc.pp("conv_out"))?;
        let quant_conv = if config.use_quant_conv {
            Some(Conv2d::new(
                Conv2dSpec::same(2 * lat, 2 * lat, 1),
                vb.pp("quant_conv"),
            )?)
        } else {
            None
        };

        // 2. decoder
        let post_quant_conv = if config.use_post_quant_conv {
            Some(Conv2d::new(
                Conv2dSpec::same(lat, lat, 1),
                vb.pp("post_quant_conv"),
            )?)
        } else {
            None
        };
        let dec_conv_in = Conv2d::new(Conv2dSpec::same(lat, ch[n - 1], 3), dec.pp("conv_in"))?;
        let dec_mid = MidBlock::new(
            ch[n - 1],
            g,
            config.mid_block_add_attention,
            dec.pp("mid_block"),
        )?;
        let mut dec_blocks = Vec::with_capacity(n);
        let mut out = ch[n - 1];
        for i in 0..n {
            let prev = out;
            out = ch[n - 1 - i];
            let up = (i + 1 < n).then_some(false);
            dec_blocks.push(CodecBlock::new(
                prev,
                out,
                config.layers_per_block + 1,
                g,
                up,
                dec.pp("up_blocks").pp(i),
            )?);
        }
        let dec_norm_out = GroupNorm::new(g, ch[0], EPS, dec.pp("conv_norm_out"))?;
        let dec_conv_out = Conv2d::new(
            Conv2dSpec::same(ch[0], config.out_channels, 3),
            dec.pp("conv_out"),
        )?;
        Ok(Self {
            config: config.clone(),
            enc_conv_in,
            enc_blocks,
            enc_mid,
            enc_norm_out,
            enc_conv_out,
            quant_conv,
            post_quant_conv,
            dec_conv_in,
            dec_mid,
            dec_blocks,
            dec_norm_out,
            dec_conv_out,
        })
    }

    /// The config the model was built from.
    pub fn config(&self) -> &AutoencoderKLConfig {
        &self.config
    }

    /// Images `(b, 3, H, W)` in [−1, 1] → posterior over unscaled latents `(b, 4, H/f, W/f)`.
    pub fn encode(&self, xs: &Tensor) -> Result<LatentDistribution> {
        // 1. down path
        let mut hs = self.enc_conv_in.forward(xs)?;
        for block in &self.enc_blocks {
            hs = block.forward(&hs, true)?;
        }
        // 2. mid and head → moments (b, 2·latent, h, w)
        hs = self.enc_mid.forward(&hs)?;
        let mut moments = self
            .enc_conv_out
            .forward(&self.enc_norm_out.forward_silu(&hs)?)?;
        if let Some(q) = &self.quant_conv {
            moments = q.forward(&moments)?;
        }
        // 3. split into mean and log-variance
        let parts = moments.chunk(2, 1)?;
        let logvar = parts[1].clamp(-30f32, 20f32)?;
        Ok(LatentDistribution {
            mean: parts[0].clone(),
            std: (logvar * 0.5)?.exp()?,
        })
    }

    /// Unscaled latents `(b, 4, h, w)` → images `(b, 3, f·h, f·w)` (roughly in [−1, 1]).
    /// Divide UNet latents by `scaling_factor` first.
    pub fn decode(&self, zs: &Tensor) -> Result<Tensor> {
        let zs = match &self.post_quant_conv {
            Some(p) => p.forward(zs)?,
            None => zs.clone(),
        };
        let mut hs = self.dec_conv_in.forward(&zs)?;
        hs = self.dec_mid.forward(&hs)?;
        for block in &self.dec_blocks {
            hs = block.forward(&hs, false)?;
        }
        Ok(self
            .dec_conv_out
            .forward(&self.dec_norm_out.forward_silu(&hs)?)?)
    }
}
