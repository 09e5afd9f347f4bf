//! A diffusers pipeline folder on local disk (`model_index.json` plus one sub-folder per
//! component), as `save_pretrained` writes it and the Hugging Face hub serves it.
//!
//! Components read here: `unet/` and `vae/` (`config.json` + safetensors weights, single file,
//! `.fp16` variant, or sharded with an index) and `scheduler/scheduler_config.json`. The text
//! encoders belong to spo-clip.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use serde::de::DeserializeOwned;

use crate::error::{DiffusionError, Result};
use crate::schedule::SchedulerConfig;
use crate::unet::{UNet2DConditionConfig, UNet2DConditionModel};
use crate::vae::{AutoencoderKL, AutoencoderKLConfig};
use crate::weights::component_var_builder;

/// The pipeline shapes spo-pipe's diffusion stages take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// SD-1.5-shaped: one text encoder, no added conditioning.
    Sd15,
    /// SDXL-shaped: two text encoders, pooled text and size conditioning (`text_time`).
    Sdxl,
}

impl Architecture {
    fn name(self) -> &'static str {
        match self {
            Architecture::Sd15 => "SD-1.5",
            Architecture::Sdxl => "SDXL",
        }
    }
}

/// An opened diffusers folder, optionally with another folder's UNet in place of its own.
#[derive(Debug, Clone)]
pub struct DiffusersFolder {
    root: PathBuf,
    index: serde_json::Value,
    /// A UNet folder (`config.json` + weights) used instead of `root/unet`.
    unet: Option<PathBuf>,
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| DiffusionError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| DiffusionError::Json {
        path: path.to_path_buf(),
        source,
    })
}

fn incompatible(path: &Path, message: String) -> DiffusionError {
    DiffusionError::Incompatible {
        path: path.to_path_buf(),
        message,
    }
}

impl DiffusersFolder {
    /// Opens `root`, which must hold a `model_index.json`.
    pub fn open(root: &Path) -> Result<Self> {
        let index = read_json(&root.join("model_index.json"))?;
        Ok(Self {
            root: root.to_path_buf(),
            index,
            unet: None,
        })
    }

    /// The same pipeline with the UNet of `dir` (a `unet/` folder as a released fine-tune
    /// ships it: Diffusion-DPO's, MaPO's) in place of its own; [`Self::check`] then checks that
    /// UNet against the pipeline's other parts.
    pub fn with_unet(mut self, dir: &Path) -> Self {
        self.unet = Some(dir.to_path_buf());
        self
    }

    /// The pipeline class named in `model_index.json` (e.g. `StableDiffusionPipeline`).
    pub fn pipeline_class(&self) -> Option<&str> {
        self.index.get("_class_name").and_then(|v| v.as_str())
    }

    /// Whether `model_index.json` lists `component` (e.g. `text_encoder_2` for SDXL).
    pub fn has_component(&self, component: &str) -> bool {
        self.index.get(component).is_some_and(|v| !v.is_null())
    }

    /// SDXL pipelines' `force_zeros_for_empty_prompt` (diffusers' default: true): the empty
    /// negative prompt is conditioned on zeros rather than on its encoding.
    pub fn force_zeros_for_empty_prompt(&self) -> bool {
        self.index
            .get("force_zeros_for_empty_prompt")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(true)
    }

    /// The folder of `component` (the replacing UNet's for `unet`).
    pub fn component_dir(&self, component: &str) -> PathBuf {
        match &self.unet {
            Some(dir) if component == "unet" => dir.clone(),
            _ => self.root.join(component),
        }
    }

    /// `unet/config.json`.
    pub fn unet_config(&self) -> Result<UNet2DConditionConfig> {
        read_json(&self.component_dir("unet").join("config.json"))
    }

    /// The UNet with its weights, as `dtype` on `device`.
    pub fn unet(&self, dtype: DType, device: &Device) -> Result<UNet2DConditionModel> {
        let vb = component_var_builder(&self.component_dir("unet"), dtype, device)?;
        UNet2DConditionModel::new(&self.unet_config()?, vb)
    }

    /// `vae/config.json`.
    pub fn vae_config(&self) -> Result<AutoencoderKLConfig> {
        read_json(&self.root.join("vae").join("config.json"))
    }

    /// The VAE with its weights, as `dtype` on `device`.
    pub fn vae(&self, dtype: DType, device: &Device) -> Result<AutoencoderKL> {
        let vb = component_var_builder(&self.component_dir("vae"), dtype, device)?;
        AutoencoderKL::new(&self.vae_config()?, vb)
    }

    /// Checks, before any weight is read, that the folder is an `arch` pipeline whose parts fit
    /// together: the UNet's conditioning, the VAE's latent channels against the UNet's, each
    /// text encoder's width against the UNet's cross-attention (and, for SDXL, its pooled
    /// projection against the added embedding), each tokenizer's vocabulary against its
    /// encoder's. The error names the file at fault and what was expected.
    pub fn check(&self, arch: Architecture) -> Result<()> {
        let unet_path = self.component_dir("unet").join("config.json");
        let unet = self.unet_config()?;
        let is_xl = unet.addition_embed_type.as_deref() == Some("text_time");
        if is_xl != (arch == Architecture::Sdxl) {
            let found = if is_xl {
                Architecture::Sdxl
            } else {
                Architecture::Sd15
            };
            return Err(incompatible(
                &unet_path,
                format!(
                    "an {}-shaped UNet (addition_embed_type = {:?}), but this stage takes {} weights",
                    found.name(),
                    unet.addition_embed_type,
                    arch.name()
                ),
            ));
        }
        // a mismatch is the part's fault, or the replacing UNet's when there is one
        let blame = |part: PathBuf| match &self.unet {
            Some(_) => unet_path.clone(),
            None => part,
        };
        let vae_path = self.root.join("vae").join("config.json");
        let vae = self.vae_config()?;
        if vae.latent_channels != unet.in_channels || vae.latent_channels != unet.out_channels {
            return Err(incompatible(
                &blame(vae_path),
                format!(
                    "the VAE's latent_channels = {}, but the UNet takes {} and gives {} channels ({})",
                    vae.latent_channels,
                    unet.in_channels,
                    unet.out_channels,
                    unet_path.display()
                ),
            ));
        }
        let encoders: &[(&str, &str)] = match arch {
            Architecture::Sd15 => &[("text_encoder", "tokenizer")],
            Architecture::Sdxl => &[
                ("text_encoder", "tokenizer"),
                ("text_encoder_2", "tokenizer_2"),
            ],
        };
        let mut width = 0;
        let mut pooled = 0;
        for (encoder, tokenizer) in encoders {
            let path = self.root.join(encoder).join("config.json");
            let config: serde_json::Value = read_json(&path)?;
            let field = |name: &str| {
                config
                    .get(name)
                    .and_then(serde_json::Value::as_u64)
                    .ok_or_else(|| {
                        incompatible(
                            &path,
                            format!("no `{name}`: not a CLIP text encoder config"),
                        )
                    })
            };
            width += field("hidden_size")?;
            pooled = config
                .get("projection_dim")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0);
            let vocab_path = self.root.join(tokenizer).join("vocab.json");
            if vocab_path.is_file() {
                let vocab: serde_json::Map<String, serde_json::Value> = read_json(&vocab_path)?;
                let size = field("vocab_size")?;
                if vocab.len() as u64 != size {
                    return Err(incompatible(
                        &vocab_path,
                        format!(
                            "{} tokens, but {encoder}/config.json has vocab_size = {size}: the tokenizer is not the text encoder's",
                            vocab.len()
                        ),
                    ));
                }
            }
        }
        if width != unet.cross_attention_dim as u64 {
            return Err(incompatible(
                &blame(self.root.join(encoders[0].0).join("config.json")),
                format!(
                    "the text encoders give {width} features per token ({}), but the UNet attends to {} ({} cross_attention_dim)",
                    encoders.iter().map(|e| e.0).collect::<Vec<_>>().join(" + "),
                    unet.cross_attention_dim,
                    unet_path.display()
                ),
            ));
        }
        if arch == Architecture::Sdxl {
            let time = unet.addition_time_embed_dim.unwrap_or(0) as u64;
            let want = unet.projection_class_embeddings_input_dim.unwrap_or(0) as u64;
            if pooled + 6 * time != want {
                return Err(incompatible(
                    &blame(self.root.join("text_encoder_2").join("config.json")),
                    format!(
                        "projection_dim = {pooled}: with 6 time ids of {time} the added embedding gets {}, but the UNet takes {want} (projection_class_embeddings_input_dim)",
                        pooled + 6 * time
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `scheduler/scheduler_config.json`, read as DDIM would (`DDIMScheduler.from_config`).
    pub fn scheduler_config(&self) -> Result<SchedulerConfig> {
        read_json(&self.root.join("scheduler").join("scheduler_config.json"))
    }
}
