//! diffusers' `UNet2DConditionModel` (`src/diffusers/models/unets/unet_2d_condition.py`) with
//! one timestep per sample, SDXL's `text_time` added conditioning, and LoRA management.
//!
//! Module tree and weight names are diffusers', so SD 1.5 / SDXL `unet/` weights load through
//! a `VarBuilder` over their safetensors, and the same code builds tiny trainable models from a
//! `VarMap`.

use candle_core::{DType, Module, Tensor};
use candle_nn::VarBuilder;
use spo_nn::checkpoint::{Direct, Segments};
use spo_nn::{Conv2d, Conv2dSpec, GroupNorm};

use crate::attention::Attention;
use crate::error::{DiffusionError, Result, into_candle};
use crate::lora::{LoraConfig, LoraSwitch, load_lora, save_lora};
use crate::unet::blocks::{AttnSpec, BlockCommon, BlockSpec, DownBlock, MidBlock, UpBlock};
use crate::unet::config::UNet2DConditionConfig;
use crate::unet::embeddings::{TimestepEmbedding, timestep_embedding};

/// SDXL's extra conditioning (`added_cond_kwargs`): pooled text embedding and size/crop ids.
#[derive(Debug, Clone)]
pub struct AddedConditioning {
    /// `text_embeds`, `(b, pooled_dim)` (SDXL: 1280).
    pub text_embeds: Tensor,
    /// `time_ids`, `(b, 6)`: original size, crop top-left, target size.
    pub time_ids: Tensor,
}

#[derive(Debug, Clone)]
struct AddEmbedding {
    time_dim: usize,
    embedding: TimestepEmbedding,
}

/// The conditional denoiser ε_θ(x_t, t, c).
#[derive(Debug, Clone)]
pub struct UNet2DConditionModel {
    config: UNet2DConditionConfig,
    conv_in: Conv2d,
    time_embedding: TimestepEmbedding,
    add_embedding: Option<AddEmbedding>,
    down_blocks: Vec<DownBlock>,
    mid_block: MidBlock,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    lora_switch: LoraSwitch,
    lora_config: Option<LoraConfig>,
}

impl UNet2DConditionModel {
    /// Builds the model from `config`, loading (or creating) every weight under `vb`.
    pub fn new(config: &UNet2DConditionConfig, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        let n = config.block_out_channels.len();
        let chans = &config.block_out_channels;
        let heads = config.heads()?;
        let layers = config.layers_per_block.resolve("layers_per_block", n)?;
        let depth = config
            .transformer_layers_per_block
            .resolve("transformer_layers_per_block", n)?;
        let temb_channels = 4 * chans[0];
        let common = BlockCommon {
            temb_channels,
            groups: config.norm_num_groups,
            eps: config.norm_eps,
            cross_attention_dim: config.cross_attention_dim,
            use_linear_projection: config.use_linear_projection,
        };

        // 1. input conv and time embedding
        let conv_in = Conv2d::new(
            Conv2dSpec::same(config.in_channels, chans[0], config.conv_in_kernel),
            vb.pp("conv_in"),
        )?;
        let time_embedding = TimestepEmbedding::new(
            chans[0],
            temb_channels,
            config.act_fn,
            vb.pp("time_embedding"),
        )?;
        let add_embedding = match (
            config.addition_embed_type.as_deref(),
            config.addition_time_embed_dim,
            config.projection_class_embeddings_input_dim,
        ) {
            (Some("text_time"), Some(time_dim), Some(in_dim)) => Some(AddEmbedding {
                time_dim,
                embedding: TimestepEmbedding::new(
                    in_dim,
                    temb_channels,
                    config.act_fn,
                    vb.pp("add_embedding"),
                )?,
            }),
            _ => None,
        };

        // 2. down blocks
        let mut down_blocks = Vec::with_capacity(n);
        let mut out_ch = chans[0];
        for i in 0..n {
            let in_ch = out_ch;
            out_ch = chans[i];
            let spec = BlockSpec {
                in_channels: in_ch,
                out_channels: out_ch,
                prev_output_channels: 0,
                layers: layers[i],
                attn: (config.down_block_types[i] == "CrossAttnDownBlock2D").then_some(AttnSpec {
                    heads: heads[i],
                    layers: depth[i],
                }),
                resample: i + 1 < n,
                downsample_padding: config.downsample_padding,
            };
            down_blocks.push(DownBlock::new(spec, &common, vb.pp("down_blocks").pp(i))?);
        }

        // 3. mid block
        let mid_attn = AttnSpec {
            heads: heads[n - 1],
            layers: depth[n - 1],
        };
        let mid_block = MidBlock::new(
            chans[n - 1],
            mid_attn,
            &common,
            config.mid_block_scale_factor,
            vb.pp("mid_block"),
        )?;

        // 4. up blocks, coarsest first
        let mut up_blocks = Vec::with_capacity(n);
        let mut out_ch = chans[n - 1];
        for i in 0..n {
            let r = n - 1 - i;
            let prev = out_ch;
            out_ch = chans[r];
            let spec = BlockSpec {
                in_channels: chans[r.saturating_sub(1)],
                out_channels: out_ch,
                prev_output_channels: prev,
                layers: layers[r],
                attn: (config.up_block_types[i] == "CrossAttnUpBlock2D").then_some(AttnSpec {
                    heads: heads[r],
                    layers: depth[r],
                }),
                resample: i + 1 < n,
                downsample_padding: 0,
            };
            up_blocks.push(UpBlock::new(spec, &common, vb.pp("up_blocks").pp(i))?);
        }

        // 5. output head
        let conv_norm_out = GroupNorm::new(
            config.norm_num_groups,
            chans[0],
            config.norm_eps,
            vb.pp("conv_norm_out"),
        )?;
        let conv_out = Conv2d::new(
            Conv2dSpec::same(chans[0], config.out_channels, config.conv_out_kernel),
            vb.pp("conv_out"),
        )?;
        Ok(Self {
            config: config.clone(),
            conv_in,
            time_embedding,
            add_embedding,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out,
            conv_out,
            lora_switch: LoraSwitch::default(),
            lora_config: None,
        })
    }

    /// The config the model was built from.
    pub fn config(&self) -> &UNet2DConditionConfig {
        &self.config
    }

    /// Predicts the noise (or v / x₀, per the scheduler) for `sample: (b, in, h, w)` at
    /// per-sample `timesteps: (b,)` given text states `context: (b, m, cross_attention_dim)`;
    /// `added` is required when the config has `addition_embed_type = "text_time"` (SDXL).
    pub fn forward(
        &self,
        sample: &Tensor,
        timesteps: &Tensor,
        context: &Tensor,
        added: Option<&AddedConditioning>,
    ) -> Result<Tensor> {
        self.forward_with(&mut Direct, sample, timesteps, context, added)
    }

    /// [`Self::forward`] as segments of `segs`: the embedding, the input conv, every ResNet,
    /// sampler and transformer block (with a transformer's projections in and out) and the
    /// output head are one segment each. On a [`spo_nn::checkpoint::Tape`] (gradient
    /// checkpointing) the forward keeps only their outputs, returns its output detached, and
    /// the tape's backward holds one layer's graph at a time.
    pub fn forward_with<'a>(
        &'a self,
        segs: &mut impl Segments<'a>,
        sample: &Tensor,
        timesteps: &Tensor,
        context: &Tensor,
        added: Option<&AddedConditioning>,
    ) -> Result<Tensor> {
        self.check_size(sample)?;
        // 1. time: sinusoidal features → MLP (plus SDXL's pooled text / size embedding)
        let (b, dtype) = (sample.dim(0)?, sample.dtype());
        let mut inputs = vec![timesteps.clone()];
        if let Some(added) = added {
            inputs.extend([added.text_embeds.clone(), added.time_ids.clone()]);
        }
        let emb = segs.run_one(&inputs, move |xs| {
            let added = (xs.len() == 3).then(|| AddedConditioning {
                text_embeds: xs[1].clone(),
                time_ids: xs[2].clone(),
            });
            self.embedding(b, dtype, &xs[0], added.as_ref())
                .map_err(into_candle)
        })?;
        // 2. pre-process
        let mut hs = segs.run_one(std::slice::from_ref(sample), move |xs| {
            self.stem(&xs[0]).map_err(into_candle)
        })?;
        // 3. down
        let mut skips = vec![hs.clone()];
        for block in &self.down_blocks {
            let (out, states) = block.forward(segs, &hs, &emb, context)?;
            hs = out;
            skips.extend(states);
        }
        // 4. mid
        hs = self.mid_block.forward(segs, &hs, &emb, context)?;
        // 5. up, each block consuming its skips from the end of the list
        for block in &self.up_blocks {
            let rest = skips.len() - block.skips_needed();
            hs = block.forward(segs, &hs, &skips[rest..], &emb, context)?;
            skips.truncate(rest);
        }
        // 6. post-process
        Ok(segs.run_one(&[hs], move |xs| self.head(&xs[0]).map_err(into_candle))?)
    }

    /// Refuses a sample the down blocks cannot halve down to the coarsest level.
    fn check_size(&self, sample: &Tensor) -> Result<()> {
        let (_b, _c, h, w) = sample.dims4()?;
        let factor = 1usize << (self.down_blocks.len() - 1);
        if h % factor != 0 || w % factor != 0 {
            return Err(candle_core::Error::Msg(format!(
                "unet: sample size {h}×{w} must be divisible by {factor}"
            ))
            .into());
        }
        Ok(())
    }

    /// The conditioning every ResNet adds, `(b, temb_channels)`: sinusoidal features of the
    /// timesteps through the time MLP, plus SDXL's pooled-text and size embedding.
    fn embedding(
        &self,
        b: usize,
        dtype: DType,
        timesteps: &Tensor,
        added: Option<&AddedConditioning>,
    ) -> Result<Tensor> {
        let t = timesteps.flatten_all()?.broadcast_as(b)?;
        let t_emb = timestep_embedding(
            &t,
            self.config.block_out_channels[0],
            self.config.flip_sin_to_cos,
            self.config.freq_shift as f64,
        )?
        .to_dtype(dtype)?;
        let mut emb = self.time_embedding.forward(&t_emb)?;
        if let Some(add) = &self.add_embedding {
            let added = added.ok_or_else(|| {
                candle_core::Error::Msg(
                    "unet: `text_time` config needs added conditioning (text_embeds, time_ids)"
                        .into(),
                )
            })?;
            // (b·6,) → (b, 6·time_dim)
            let ids = timestep_embedding(
                &added.time_ids.flatten_all()?,
                add.time_dim,
                self.config.flip_sin_to_cos,
                self.config.freq_shift as f64,
            )?
            .reshape((b, ()))?
            .to_dtype(dtype)?;
            let features = Tensor::cat(&[&added.text_embeds.to_dtype(dtype)?, &ids], 1)?;
            emb = (emb + add.embedding.forward(&features)?)?;
        }
        Ok(emb)
    }

    /// The input, centred if the config says so, through `conv_in`.
    fn stem(&self, sample: &Tensor) -> Result<Tensor> {
        let sample = if self.config.center_input_sample {
            ((sample * 2.0)? - 1.0)?
        } else {
            sample.clone()
        };
        Ok(self.conv_in.forward(&sample)?)
    }

    /// Norm, SiLU and `conv_out`.
    fn head(&self, hs: &Tensor) -> Result<Tensor> {
        let hs = self.conv_norm_out.forward_silu(hs)?;
        Ok(self.conv_out.forward(&hs)?)
    }

    /// Whether a forward through the adapters records a graph (see [`LoraSwitch::set_tracked`]).
    pub fn set_lora_tracked(&self, tracked: bool) {
        self.lora_switch.set_tracked(tracked)
    }

    /// Every attention layer (the LoRA targets), in module order.
    pub fn attentions(&self) -> Vec<&Attention> {
        let mut all: Vec<&Attention> = self
            .down_blocks
            .iter()
            .flat_map(|b| b.attentions())
            .collect();
        all.extend(self.up_blocks.iter().flat_map(|b| b.attentions()));
        all.extend(self.mid_block.attentions());
        all
    }

    fn attentions_mut(&mut self) -> Vec<&mut Attention> {
        let mut all: Vec<&mut Attention> = self
            .down_blocks
            .iter_mut()
            .flat_map(|b| b.attentions_mut())
            .collect();
        all.extend(self.up_blocks.iter_mut().flat_map(|b| b.attentions_mut()));
        all.extend(self.mid_block.attentions_mut());
        all
    }

    /// Adds a LoRA adapter to the targeted projections of every attention layer. The adapter
    /// tensors come from `vb` under `<attention path>.<module>.lora_A.weight` / `lora_B.weight`:
    /// use `spo_nn::seeded_var_builder` over a fresh `VarMap` to create trainable adapters
    /// (A ~ N(0, 1/r²), B = 0), or a builder over a LoRA file to load one.
    pub fn add_lora(&mut self, config: &LoraConfig, vb: &VarBuilder) -> Result<()> {
        let switch = self.lora_switch.clone();
        for attn in self.attentions_mut() {
            attn.add_lora(config, &switch, vb)?;
        }
        self.lora_config = Some(config.clone());
        Ok(())
    }

    /// Loads a LoRA file (PEFT or diffusers key dialect, component `unet`) as frozen adapters;
    /// every tensor of the file must find its module. Returns the adapter config.
    pub fn load_lora(&mut self, path: &std::path::Path) -> Result<LoraConfig> {
        let device = self.conv_in.weight().device().clone();
        let file = load_lora(path, "unet", &device)?;
        let config = file.config_or_inferred()?;
        let expected = file.tensors.len();
        let vb = VarBuilder::from_tensors(file.tensors, candle_core::DType::F32, &device);
        self.add_lora(&config, &vb)?;
        let attached = self.lora_tensors().len();
        if attached != expected {
            return Err(DiffusionError::Lora(format!(
                "`{}` holds {expected} adapter tensors but the model's targets use {attached}",
                path.display()
            )));
        }
        Ok(config)
    }

    /// Adapter tensors named `<module>.lora_A.weight` / `<module>.lora_B.weight`.
    pub fn lora_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for attn in self.attentions() {
            for (name, layer) in attn.projections() {
                if let Some((a, b)) = layer.adapter() {
                    out.push((format!("{}.{name}.lora_A.weight", attn.path()), a.clone()));
                    out.push((format!("{}.{name}.lora_B.weight", attn.path()), b.clone()));
                }
            }
        }
        out
    }

    /// Writes the adapters as a diffusers-loadable LoRA file (`unet.` prefix, PEFT keys).
    pub fn save_lora(&self, path: &std::path::Path) -> Result<()> {
        let config = self
            .lora_config
            .as_ref()
            .ok_or_else(|| DiffusionError::Lora("the model has no adapter to save".into()))?;
        save_lora(path, "unet", &self.lora_tensors(), config)
    }

    /// Applies (true: the policy) or bypasses (false: the frozen base, SPO's reference) every
    /// adapter.
    pub fn set_lora_enabled(&self, enabled: bool) {
        self.lora_switch.set(enabled)
    }

    /// Folds every adapter into its base weight, leaving a plain model.
    pub fn merge_lora(&mut self) -> Result<()> {
        for attn in self.attentions_mut() {
            for (_, layer) in attn.projections_mut() {
                layer.merge()?;
            }
        }
        self.lora_config = None;
        Ok(())
    }
}
