//! Loading the in-world models that stages hand to each other: the tiny CLIP (text encoder and
//! scorers' backbone) and the base diffusion model.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use spo_clip::{ClipConfig, ClipModel};
use spo_core::{Input, StageContext, StageError};
use spo_diffusion::{
    GuidanceInputs, LoraConfig, UNet2DConditionConfig, UNet2DConditionModel, guided_prediction,
};
use spo_methods::spo::Denoiser;
use spo_nn::{AdamW, AdamWConfig, named_vars, seeded_var_builder};

use crate::error::{At, Result};
use crate::vocab::Vocab;

/// A CLIP-style model with its config and vocabulary, as `clip-pretrain` / `pickscore-train` write it.
pub struct InWorldClip {
    pub model: ClipModel,
    pub config: ClipConfig,
    pub vocab: Vocab,
}

fn read(path: &Path) -> Result<Vec<u8>> {
    Ok(std::fs::read(path).map_err(|e| StageError::io(path, e))?)
}

/// A JSON artifact, the error naming its file.
pub fn json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    serde_json::from_slice(&read(path)?).at(path)
}

/// The `vocab.json` of an input.
pub fn load_vocab(input: &Input) -> Result<Vocab> {
    let path = input.file("vocab.json")?;
    Vocab::from_json(&read(&path)?, &path)
}

/// Frozen weights from a safetensors file.
pub fn frozen_vb(path: &Path, device: &Device) -> Result<VarBuilder<'static>> {
    // SAFETY: the store never modifies a committed file; the mapping is read-only.
    unsafe { VarBuilder::from_mmaped_safetensors(&[path], DType::F32, device) }.at(path)
}

impl InWorldClip {
    /// Loads `clip.safetensors`, `clip_config.json` and `vocab.json` from an input, frozen.
    pub fn load(input: &Input, device: &Device) -> Result<InWorldClip> {
        let config: ClipConfig = json(&input.file("clip_config.json")?)?;
        let vocab = load_vocab(input)?;
        let weights = input.file("clip.safetensors")?;
        let model = ClipModel::new(&config, frozen_vb(&weights, device)?).at(&weights)?;
        Ok(InWorldClip {
            model,
            config,
            vocab,
        })
    }

    /// The UNet's classifier-free-guided ε for `x` at `timesteps`, prompted with `texts`.
    pub fn guided_eps(
        &self,
        unet: &UNet2DConditionModel,
        x: &Tensor,
        timesteps: &[usize],
        texts: &[&str],
        scale: f64,
        device: &Device,
    ) -> Result<Tensor> {
        self.conditioning(texts, device)?
            .guided_eps(unet, x, timesteps, scale)
    }

    /// The guidance contexts of `texts`, to encode once and reuse across denoising steps; the
    /// unconditional branch is the empty prompt (encoded once, repeated per row), as in SD.
    pub fn conditioning(&self, texts: &[&str], device: &Device) -> Result<Conditioning> {
        let cond = self.context(texts, device)?;
        let uncond = self.context(&[""], device)?.repeat((texts.len(), 1, 1))?;
        Ok(Conditioning { cond, uncond })
    }

    /// The text tower's last hidden states for `texts`: `(n, max_len, width)`, the UNet's context.
    pub fn context(&self, texts: &[&str], device: &Device) -> Result<Tensor> {
        let ids = self.vocab.batch(texts, device)?;
        Ok(self.model.text_model().last_hidden_state(&ids)?)
    }
}

/// Encoded prompts for classifier-free guidance: one row per prompt in each branch.
pub struct Conditioning {
    cond: Tensor,
    uncond: Tensor,
}

impl Conditioning {
    /// The rows `idx` (a `u32` tensor) of both branches, in that order.
    pub fn select(&self, idx: &Tensor) -> Result<Conditioning> {
        Ok(Conditioning {
            cond: self.cond.index_select(idx, 0)?,
            uncond: self.uncond.index_select(idx, 0)?,
        })
    }

    /// The UNet's classifier-free-guided ε for `x` at `timesteps`.
    pub fn guided_eps(
        &self,
        unet: &UNet2DConditionModel,
        x: &Tensor,
        timesteps: &[usize],
        scale: f64,
    ) -> Result<Tensor> {
        let inputs = GuidanceInputs {
            cond: &self.cond,
            uncond: &self.uncond,
            added_cond: None,
            added_uncond: None,
            scale,
        };
        Ok(guided_prediction(unet, x, timesteps, &inputs)?)
    }
}

/// The base model's architecture for the world's canvas: diffusers' UNet2DConditionModel layout
/// in pixel space, RGB in and out, one block per entry of `channels` (each but the last halving
/// the resolution), with cross-attention only in the lowest-resolution block and the mid block.
/// On a CPU, attention at the full 32×32 resolution (1024 tokens) costs more than everything
/// The LoRA policy with classifier-free guidance, as SPO's round and the online methods'
/// rollouts take it; the reference is the same UNet with its LoRA switched off.
pub(crate) struct GuidedUnet<'a> {
    pub unet: &'a UNet2DConditionModel,
    pub text: &'a InWorldClip,
    pub cfg: f64,
    pub dev: &'a Device,
}

impl Denoiser for GuidedUnet<'_> {
    type Prompts = Conditioning;
    fn encode(&self, texts: &[&str]) -> candle_core::Result<Conditioning> {
        self.text
            .conditioning(texts, self.dev)
            .map_err(candle_core::Error::wrap)
    }
    fn eps(
        &self,
        prompts: &Conditioning,
        x: &Tensor,
        ts: &[usize],
        reference: bool,
    ) -> candle_core::Result<Tensor> {
        self.unet.set_lora_enabled(!reference);
        let eps = prompts
            .guided_eps(self.unet, x, ts, self.cfg)
            .map_err(candle_core::Error::wrap)?;
        Ok(if reference { eps.detach() } else { eps })
    }
    fn select(&self, prompts: &Conditioning, rows: &[u32]) -> candle_core::Result<Conditioning> {
        let idx = Tensor::from_vec(rows.to_vec(), rows.len(), self.dev)?;
        prompts.select(&idx).map_err(candle_core::Error::wrap)
    }
    fn sample_size(&self) -> usize {
        self.unet.config().sample_size.unwrap_or(32)
    }
    fn channels(&self) -> usize {
        self.unet.config().in_channels
    }
    fn device(&self) -> &Device {
        self.dev
    }
}

/// else together; at 8×8 the text still steers every pixel through the decoder.
pub fn unet_config(canvas: usize, channels: &[usize], context_dim: usize) -> UNet2DConditionConfig {
    let mut c = UNet2DConditionConfig::tiny();
    let n = channels.len();
    c.sample_size = Some(canvas);
    c.in_channels = 3;
    c.out_channels = 3;
    c.block_out_channels = channels.to_vec();
    c.down_block_types = (0..n)
        .map(|i| {
            if i + 1 == n {
                "CrossAttnDownBlock2D"
            } else {
                "DownBlock2D"
            }
            .to_owned()
        })
        .collect();
    c.up_block_types = (0..n)
        .map(|i| {
            if i == 0 {
                "CrossAttnUpBlock2D"
            } else {
                "UpBlock2D"
            }
            .to_owned()
        })
        .collect();
    c.cross_attention_dim = context_dim;
    c
}

/// A UNet with fresh, seeded weights in `varmap`.
pub fn new_unet(
    config: &UNet2DConditionConfig,
    varmap: &VarMap,
    seed: u64,
    device: &Device,
) -> Result<UNet2DConditionModel> {
    Ok(UNet2DConditionModel::new(
        config,
        spo_nn::seeded_var_builder(varmap, seed, DType::F32, device),
    )?)
}

/// The frozen base UNet of a `base-pretrain` input.
pub fn load_unet(input: &Input, device: &Device) -> Result<UNet2DConditionModel> {
    let config: UNet2DConditionConfig = json(&input.file("unet_config.json")?)?;
    let weights = input.file("unet.safetensors")?;
    UNet2DConditionModel::new(&config, frozen_vb(&weights, device)?).at(&weights)
}

/// A LoRA policy on a frozen base model: the base (a `base-pretrain` input) with fresh rank-`rank`
/// adapters on SPO's targets, drawn from `seed`, and AdamW (learning rate `lr`, decoupled weight
/// decay `weight_decay`) over the adapters alone: what every fine-tuning method here trains.
pub fn lora_policy(
    base: &Input,
    rank: usize,
    seed: u64,
    lr: f64,
    weight_decay: f64,
    device: &Device,
) -> Result<(UNet2DConditionModel, VarMap, AdamW)> {
    let mut unet = load_unet(base, device)?;
    let lora_vars = VarMap::new();
    unet.add_lora(
        &LoraConfig::spo(rank),
        &seeded_var_builder(&lora_vars, seed, DType::F32, device),
    )?;
    let opt = adapter_optimizer(&lora_vars, lr, weight_decay)?;
    Ok((unet, lora_vars, opt))
}

/// AdamW (learning rate `lr`, decoupled weight decay `weight_decay`) over the adapters in
/// `lora_vars` alone: the optimizer of every LoRA method, in the world and on real weights.
pub fn adapter_optimizer(lora_vars: &VarMap, lr: f64, weight_decay: f64) -> Result<AdamW> {
    Ok(AdamW::new(
        named_vars(lora_vars)?,
        AdamWConfig {
            lr,
            weight_decay,
            ..Default::default()
        },
    )?)
}

/// Saves a var map as a committed safetensors artifact.
pub fn save_varmap(cx: &mut StageContext, varmap: &VarMap, rel: &str) -> Result<()> {
    let path = cx.out_dir().join(rel);
    varmap.save(&path).at(&path)
}

/// Runs `work` (a model stage's body, or one step of it) on a rayon pool of `threads` threads,
/// the cell's core share (`StageContext::threads`, asked just before), so that spo-nn's kernels
/// parallelise in place rather than handing every op from the stage's own thread to the global
/// pool (`spo_nn::threads`). Long stages call it once per step, so that a cell lent more cores
/// when its neighbours finish uses them. The kernels' results do not depend on the number of
/// threads, so neither do the stored bytes.
pub(crate) fn on_cores<R: Send>(
    threads: usize,
    work: impl FnOnce() -> Result<R> + Send,
) -> Result<R> {
    spo_nn::threads::install(threads, work)?
}
