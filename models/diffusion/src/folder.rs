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

/// An opened diffusers folder.
#[derive(Debug, Clone)]
pub struct DiffusersFolder {
    root: PathBuf,
    index: serde_json::Value,
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

impl DiffusersFolder {
    /// Opens `root`, which must hold a `model_index.json`.
    pub fn open(root: &Path) -> Result<Self> {
        let index = read_json(&root.join("model_index.json"))?;
        Ok(Self {
            root: root.to_path_buf(),
            index,
        })
    }

    /// The pipeline class named in `model_index.json` (e.g. `StableDiffusionPipeline`).
    pub fn pipeline_class(&self) -> Option<&str> {
        self.index.get("_class_name").and_then(|v| v.as_str())
    }

    /// Whether `model_index.json` lists `component` (e.g. `text_encoder_2` for SDXL).
    pub fn has_component(&self, component: &str) -> bool {
        self.index.get(component).is_some_and(|v| !v.is_null())
    }

    /// The folder of `component`.
    pub fn component_dir(&self, component: &str) -> PathBuf {
        self.root.join(component)
    }

    /// `unet/config.json`.
    pub fn unet_config(&self) -> Result<UNet2DConditionConfig> {
        read_json(&self.root.join("unet").join("config.json"))
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

    /// `scheduler/scheduler_config.json`, read as DDIM would (`DDIMScheduler.from_config`).
    pub fn scheduler_config(&self) -> Result<SchedulerConfig> {
        read_json(&self.root.join("scheduler").join("scheduler_config.json"))
    }
}
