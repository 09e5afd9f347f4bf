//! An SD-1.5-shaped pipeline: prompt → text states, DDIM with classifier-free guidance in the
//! VAE's latent space, latents → images, as diffusers' `StableDiffusionPipeline` runs it with a
//! `DDIMScheduler` made from the folder's scheduler config (what SPO samples with).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use spo_diffusion::{
    Architecture, AutoencoderKL, Ddim, DiffusersFolder, GuidanceInputs, NoiseSchedule,
    SchedulerConfig, UNet2DConditionModel, guided_prediction,
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

/// Prompt and negative-prompt states for one batch.
#[derive(Debug, Clone)]
pub struct Conditioning {
    /// `(b, 77, d)` states of the prompts.
    pub cond: Tensor,
    /// `(b, 77, d)` states of the empty prompt (diffusers' negative prompt by default).
    pub uncond: Tensor,
}

/// The components of an SD-1.5-shaped diffusers folder, loaded.
#[derive(Debug)]
pub struct StableDiffusion15 {
    text: TextEncoder,
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    scheduler: SchedulerConfig,
    latent: [usize; 3],
    image: [usize; 2],
    device: Device,
}

impl StableDiffusion15 {
    /// Opens the diffusers folder `root`, checking first that it is SD-1.5-shaped and that its
    /// parts fit ([`DiffusersFolder::check`]); weights as `dtype` on `device`.
    pub fn open(root: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let folder = DiffusersFolder::open(root)?;
        folder.check(Architecture::Sd15)?;
        let text = TextEncoder::open(
            &folder.component_dir("text_encoder"),
            &folder.component_dir("tokenizer"),
            dtype,
            device,
        )?;
        let unet = folder.unet(dtype, device)?;
        let vae = folder.vae(dtype, device)?;
        let side = unet.config().sample_size.unwrap_or(64);
        let scale = 1 << vae.config().block_out_channels.len().saturating_sub(1);
        Ok(Self {
            latent: [unet.config().in_channels, side, side],
            image: [side * scale, side * scale],
            text,
            unet,
            vae,
            scheduler: folder.scheduler_config()?,
            device: device.clone(),
        })
    }

    /// The UNet.
    pub fn unet(&self) -> &UNet2DConditionModel {
        &self.unet
    }

    /// The UNet (e.g. to load a LoRA into).
    pub fn unet_mut(&mut self) -> &mut UNet2DConditionModel {
        &mut self.unet
    }

    /// The device the weights are on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The text encoder.
    pub fn text_encoder(&self) -> &TextEncoder {
        &self.text
    }

    /// `[channels, height, width]` of one image's latents at the UNet's `sample_size`.
    pub fn latent_shape(&self) -> [usize; 3] {
        self.latent
    }

    /// `[height, width]` of the images the VAE decodes those latents to.
    pub fn image_size(&self) -> [usize; 2] {
        self.image
    }

    /// The states of `prompts` and of as many empty prompts.
    pub fn conditioning(&self, prompts: &[&str]) -> Result<Conditioning> {
        let empty = vec![""; prompts.len()];
        Ok(Conditioning {
            cond: self.text.last_hidden_state(prompts)?,
            uncond: self.text.last_hidden_state(&empty)?,
        })
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
        let guidance = GuidanceInputs {
            cond: &prompts.cond,
            uncond: &prompts.uncond,
            added_cond: None,
            added_uncond: None,
            scale: s.cfg,
        };
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

    /// The folder's scheduler config.
    pub fn scheduler(&self) -> &SchedulerConfig {
        &self.scheduler
    }

    /// Latents → the VAE's output `(b, 3, H, W)` in about [−1, 1], f32, unclamped: the VAE
    /// decodes `latents / scaling_factor`.
    pub fn decode_raw(&self, latents: &Tensor) -> Result<Tensor> {
        let z = (latents / self.vae.config().scaling_factor)?;
        Ok(self.vae.decode(&z)?.to_dtype(DType::F32)?)
    }

    /// Latents → images `(b, 3, H, W)` in [0, 1], f32: [`Self::decode_raw`], then
    /// `(x / 2 + 0.5).clamp(0, 1)` as diffusers post-processes.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let x = self.decode_raw(latents)?;
        Ok(((x / 2.0)? + 0.5)?.clamp(0f32, 1f32)?)
    }
}
