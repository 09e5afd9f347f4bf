//! A Stable Diffusion pipeline read from a diffusers folder, SD-1.5- or SDXL-shaped: prompt →
//! text states, DDIM with classifier-free guidance in the VAE's latent space, latents → images,
//! as diffusers' `StableDiffusionPipeline` / `StableDiffusionXLPipeline` run them with a
//! `DDIMScheduler` made from the folder's scheduler config (what SPO samples with).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use spo_diffusion::{
    AddedConditioning, Architecture, AutoencoderKL, AutoencoderKLConfig, Ddim, DiffusersFolder,
    GuidanceInputs, NoiseSchedule, SchedulerConfig, UNet2DConditionModel, guided_prediction,
};
use spo_nn::SeededRng;

use crate::error::Result;
use crate::text::TextEncoder;

/// How to sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleSettings {
    /// DDIM steps.
    pub steps: usize,
    /// Classifier-free guidance scale (1: no guidance).
    pub cfg: f64,
    /// DDIM stochasticity η (0: deterministic).
    pub eta: f64,
}

/// Prompt and negative-prompt conditioning for one batch.
#[derive(Debug, Clone)]
pub struct Conditioning {
    /// `(b, 77, d)` states of the prompts.
    pub cond: Tensor,
    /// `(b, 77, d)` states of the empty negative prompt (SDXL by default: zeros).
    pub uncond: Tensor,
    /// SDXL: the pooled text embedding and the size ids of each branch.
    pub added: Option<(AddedConditioning, AddedConditioning)>,
}

impl Conditioning {
    /// The conditioning of `rows` (indices into this batch), in that order.
    pub fn select(&self, rows: &[u32]) -> candle_core::Result<Conditioning> {
        let idx = Tensor::from_vec(rows.to_vec(), rows.len(), self.cond.device())?;
        let pick = |a: &AddedConditioning| -> candle_core::Result<AddedConditioning> {
            Ok(AddedConditioning {
                text_embeds: a.text_embeds.index_select(&idx, 0)?,
                time_ids: a.time_ids.index_select(&idx, 0)?,
            })
        };
        Ok(Conditioning {
            cond: self.cond.index_select(&idx, 0)?,
            uncond: self.uncond.index_select(&idx, 0)?,
            added: match &self.added {
                Some((c, u)) => Some((pick(c)?, pick(u)?)),
                None => None,
            },
        })
    }

    /// The guidance inputs at `scale`.
    pub fn guidance(&self, scale: f64) -> GuidanceInputs<'_> {
        GuidanceInputs {
            cond: &self.cond,
            uncond: &self.uncond,
            added_cond: self.added.as_ref().map(|a| &a.0),
            added_uncond: self.added.as_ref().map(|a| &a.1),
            scale,
        }
    }
}

/// The dtype the VAE `vae` of a `dtype` pipeline runs in: diffusers upcasts a half-precision
/// pipeline's VAE to f32 unless its config's `force_upcast` is false (SDXL's fp16-fix VAE).
pub fn vae_dtype(vae: &AutoencoderKLConfig, dtype: DType) -> DType {
    if dtype != DType::F32 && vae.force_upcast {
        DType::F32
    } else {
        dtype
    }
}

/// The components of a diffusers folder, loaded.
#[derive(Debug)]
pub struct StableDiffusion {
    arch: Architecture,
    /// One text encoder (SD-1.5) or two (SDXL: ViT-L, then bigG with its projection).
    text: Vec<TextEncoder>,
    /// SDXL's `force_zeros_for_empty_prompt`: the negative prompt's states are zeros.
    zero_uncond: bool,
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    scheduler: SchedulerConfig,
    latent: [usize; 3],
    image: [usize; 2],
    dtype: DType,
    /// The VAE's: f32 when a half-precision pipeline's VAE must be upcast.
    vae_dtype: DType,
    device: Device,
}

impl StableDiffusion {
    /// Opens the diffusers folder `root` — SDXL-shaped when `model_index.json` lists a
    /// `text_encoder_2`, else SD-1.5-shaped — checking first that its parts fit
    /// ([`DiffusersFolder::check`]); weights as `dtype` on `device` — the VAE's in f32 when
    /// `dtype` is half precision and its config has `force_upcast` (its default), as diffusers
    /// runs it.
    pub fn open(root: &Path, dtype: DType, device: &Device) -> Result<Self> {
        Self::open_folder(&DiffusersFolder::open(root)?, dtype, device)
    }

    /// [`Self::open`] on an opened folder (with another UNet in place of its own, say:
    /// [`DiffusersFolder::with_unet`]).
    pub fn open_folder(folder: &DiffusersFolder, dtype: DType, device: &Device) -> Result<Self> {
        let arch = if folder.has_component("text_encoder_2") {
            Architecture::Sdxl
        } else {
            Architecture::Sd15
        };
        folder.check(arch)?;
        let encoders: &[(&str, &str)] = match arch {
            Architecture::Sd15 => &[("text_encoder", "tokenizer")],
            Architecture::Sdxl => &[
                ("text_encoder", "tokenizer"),
                ("text_encoder_2", "tokenizer_2"),
            ],
        };
        let text = encoders
            .iter()
            .map(|(enc, tok)| {
                TextEncoder::open(
                    &folder.component_dir(enc),
                    &folder.component_dir(tok),
                    dtype,
                    device,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let unet = folder.unet(dtype, device)?;
        let vae_dtype = vae_dtype(&folder.vae_config()?, dtype);
        let vae = folder.vae(vae_dtype, device)?;
        let side = unet.config().sample_size.unwrap_or(64);
        let scale = 1 << vae.config().block_out_channels.len().saturating_sub(1);
        Ok(Self {
            arch,
            text,
            zero_uncond: arch == Architecture::Sdxl && folder.force_zeros_for_empty_prompt(),
            latent: [unet.config().in_channels, side, side],
            image: [side * scale, side * scale],
            unet,
            vae,
            scheduler: folder.scheduler_config()?,
            dtype,
            vae_dtype,
            device: device.clone(),
        })
    }

    /// SD-1.5- or SDXL-shaped.
    pub fn architecture(&self) -> Architecture {
        self.arch
    }

    /// The UNet.
    pub fn unet(&self) -> &UNet2DConditionModel {
        &self.unet
    }

    /// The UNet (e.g. to load a LoRA into).
    pub fn unet_mut(&mut self) -> &mut UNet2DConditionModel {
        &mut self.unet
    }

    /// The dtype of the frozen weights, the text states and the latents the UNet takes (the
    /// VAE's may be f32: see [`Self::open`]).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device the weights are on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The text encoders, in the folder's order.
    pub fn text_encoders(&self) -> &[TextEncoder] {
        &self.text
    }

    /// The folder's scheduler config.
    pub fn scheduler(&self) -> &SchedulerConfig {
        &self.scheduler
    }

    /// `[channels, height, width]` of one image's latents at the UNet's `sample_size`.
    pub fn latent_shape(&self) -> [usize; 3] {
        self.latent
    }

    /// `[height, width]` of the images the VAE decodes those latents to.
    pub fn image_size(&self) -> [usize; 2] {
        self.image
    }

    /// The conditioning of `prompts` against as many empty negative prompts. SD-1.5: the
    /// encoder's last states. SDXL: both encoders' penultimate states side by side, the second
    /// encoder's projected pooled state, and `add_time_ids` = (H, W, 0, 0, H, W) for both
    /// branches; the negative prompt's states are zeros where the folder forces them.
    pub fn conditioning(&self, prompts: &[&str]) -> Result<Conditioning> {
        let (cond, added) = self.prompt_states(prompts)?;
        let (uncond, added_uncond) = match &added {
            Some(a) if self.zero_uncond => (
                cond.zeros_like()?,
                Some(AddedConditioning {
                    text_embeds: a.text_embeds.zeros_like()?,
                    time_ids: a.time_ids.clone(),
                }),
            ),
            _ => self.prompt_states(&vec![""; prompts.len()])?,
        };
        Ok(Conditioning {
            cond,
            uncond,
            added: added.zip(added_uncond),
        })
    }

    /// The states of `prompts` alone (no negative branch), as training without guidance takes
    /// them: SD-1.5's last states; SDXL's penultimate states with its added conditioning.
    pub fn prompt_states(&self, prompts: &[&str]) -> Result<(Tensor, Option<AddedConditioning>)> {
        if self.arch == Architecture::Sd15 {
            return Ok((self.text[0].last_hidden_state(prompts)?, None));
        }
        let mut states = Vec::with_capacity(self.text.len());
        let mut pooled = None;
        for enc in &self.text {
            let (s, p) = enc.penultimate_and_pooled(prompts)?;
            states.push(s);
            pooled = Some(p);
        }
        let text_embeds =
            pooled.ok_or_else(|| candle_core::Error::Msg("no text encoder".into()))?;
        let cond = Tensor::cat(&states, 2)?;
        let [h, w] = self.image;
        let ids = [h as f32, w as f32, 0.0, 0.0, h as f32, w as f32];
        let time_ids = Tensor::new(&ids, &self.device)?
            .unsqueeze(0)?
            .repeat((prompts.len(), 1))?
            .to_dtype(cond.dtype())?;
        Ok((
            cond,
            Some(AddedConditioning {
                text_embeds,
                time_ids,
            }),
        ))
    }

    /// Images `(b, 3, H, W)` in [−1, 1] → latents for the UNet: the VAE's latent distribution
    /// sampled with `noise` (unit Gaussian, the latents' shape), times `scaling_factor`.
    pub fn encode(&self, pixels: &Tensor, noise: &Tensor) -> Result<Tensor> {
        let dist = self.vae.encode(&pixels.to_dtype(self.vae_dtype)?)?;
        let z = dist.sample(&noise.to_dtype(self.vae_dtype)?)?;
        Ok((z * self.vae.config().scaling_factor)?.to_dtype(self.dtype)?)
    }

    /// Runs DDIM from `latents` (`(b, c, h, w)`, unit Gaussian: DDIM's initial sigma is 1) to
    /// the final latents. With η > 0, each step's noise is drawn from `rng`.
    pub fn denoise(
        &self,
        prompts: &Conditioning,
        latents: &Tensor,
        s: &SampleSettings,
        rng: &mut SeededRng,
    ) -> Result<Tensor> {
        let ddim = Ddim::new(NoiseSchedule::new(self.scheduler.clone())?, s.steps, s.eta)?;
        let guidance = prompts.guidance(s.cfg);
        let b = latents.dim(0)?;
        let mut x = latents.to_dtype(prompts.cond.dtype())?;
        for &t in ddim.timesteps() {
            let ts = vec![t; b];
            let eps = guided_prediction(&self.unet, &x, &ts, &guidance)?;
            let z = if s.eta > 0.0 {
                Some(rng.normal(x.shape(), 0.0, 1.0, x.dtype(), x.device())?)
            } else {
                None
            };
            x = ddim.step(&eps, &ts, &x, z.as_ref())?.0;
        }
        Ok(x)
    }

    /// Latents → the VAE's output `(b, 3, H, W)` in about [−1, 1], f32, unclamped: the VAE
    /// decodes `latents / scaling_factor`.
    pub fn decode_raw(&self, latents: &Tensor) -> Result<Tensor> {
        let z = (latents.to_dtype(self.vae_dtype)? / self.vae.config().scaling_factor)?;
        Ok(self.vae.decode(&z)?.to_dtype(DType::F32)?)
    }

    /// Latents → images `(b, 3, H, W)` in [0, 1], f32: [`Self::decode_raw`], then
    /// `(x / 2 + 0.5).clamp(0, 1)` as diffusers post-processes.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let x = self.decode_raw(latents)?;
        Ok(((x / 2.0)? + 0.5)?.clamp(0f32, 1f32)?)
    }
}
