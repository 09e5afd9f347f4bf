//! `CLIPModel`: both towers, their projections and `logit_scale`, in HF naming, with loaders
//! for HF folders (safetensors or `pytorch_model.bin`) and OpenCLIP checkpoints (HPSv2).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{Init, Linear, VarBuilder, VarMap};
use spo_nn::linear::linear_no_bias;

use crate::config::ClipConfig;
use crate::error::ClipError;
use crate::text::ClipTextTransformer;
use crate::vision::ClipVisionTransformer;
use crate::weights::{CheckedWeights, open_clip_to_hf, read_tensors};
use spo_nn::linear::forward_2d;

/// The dual encoder. Build it with [`ClipModel::new`] from any `VarBuilder` (a checkpoint or a
/// `VarMap` for training) or with the `load_*` helpers.
#[derive(Debug, Clone)]
pub struct ClipModel {
    text_model: ClipTextTransformer,
    vision_model: ClipVisionTransformer,
    visual_projection: Linear,
    text_projection: Linear,
    logit_scale: Tensor,
    config: ClipConfig,
}

impl ClipModel {
    /// Loads or creates the model under `vb` (HF key names).
    pub fn new(cfg: &ClipConfig, vb: VarBuilder) -> Result<Self> {
        Self::build(cfg, false, vb)
    }

    /// As [`new`](Self::new), with the SPM's adaLN layers in the vision tower when
    /// `time_conditioned`.
    pub(crate) fn build(cfg: &ClipConfig, time_conditioned: bool, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::Msg)?;
        let (t, v) = (&cfg.text_config, &cfg.vision_config);
        Ok(Self {
            text_model: ClipTextTransformer::new(t, vb.pp("text_model"))?,
            vision_model: ClipVisionTransformer::new(v, time_conditioned, vb.pp("vision_model"))?,
            visual_projection: linear_no_bias(
                v.hidden_size,
                cfg.projection_dim,
                vb.pp("visual_projection"),
            )?,
            text_projection: linear_no_bias(
                t.hidden_size,
                cfg.projection_dim,
                vb.pp("text_projection"),
            )?,
            logit_scale: vb.get_with_hints(
                (),
                "logit_scale",
                Init::Const(cfg.logit_scale_init_value),
            )?,
            config: cfg.clone(),
        })
    }

    /// The configuration the model was built with.
    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// `logit_scale` (a 0-d tensor; the score multiplies by its exponential).
    pub fn logit_scale(&self) -> &Tensor {
        &self.logit_scale
    }

    /// The vision tower.
    pub fn vision_model(&self) -> &ClipVisionTransformer {
        &self.vision_model
    }

    /// The text tower.
    pub fn text_model(&self) -> &ClipTextTransformer {
        &self.text_model
    }

    /// `(b, n)` token ids → `(b, projection_dim)` text embeddings (not normalised).
    pub fn get_text_features(&self, ids: &Tensor) -> Result<Tensor> {
        forward_2d(&self.text_projection, &self.text_model.forward(ids)?)
    }

    /// `(b, 3, s, s)` normalised pixels → `(b, projection_dim)` image embeddings (not normalised).
    pub fn get_image_features(&self, pixels: &Tensor) -> Result<Tensor> {
        forward_2d(
            &self.visual_projection,
            &self.vision_model.forward(pixels, None)?,
        )
    }

    /// The SPM's image embeddings with conditioning `cond` = SiLU(τ), `(b, dim)`.
    pub(crate) fn image_features_conditioned(
        &self,
        pixels: &Tensor,
        cond: &Tensor,
    ) -> Result<Tensor> {
        forward_2d(
            &self.visual_projection,
            &self.vision_model.forward(pixels, Some(cond))?,
        )
    }

    /// `exp(logit_scale)·cos(img_i, txt_i)` for paired rows, as a differentiable `(b,)` tensor
    /// (the training-side score; scorers use [`crate::scorers`], which accumulate in f64).
    pub fn paired_logits(&self, image_embeds: &Tensor, text_embeds: &Tensor) -> Result<Tensor> {
        let cos = (l2_normalize(image_embeds)? * l2_normalize(text_embeds)?)?.sum(1)?;
        cos.broadcast_mul(&self.logit_scale.exp()?)
    }
}

/// Rows divided by their L2 norm.
pub fn l2_normalize(xs: &Tensor) -> Result<Tensor> {
    xs.broadcast_div(&xs.sqr()?.sum_keepdim(1)?.sqrt()?)
}

/// The weights file of an HF folder: `model.safetensors`, else `pytorch_model.bin`.
pub fn hf_weights_file(dir: &Path) -> std::result::Result<PathBuf, ClipError> {
    let candidates = ["model.safetensors", "pytorch_model.bin"];
    candidates
        .iter()
        .map(|name| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| ClipError::MissingFile {
            dir: dir.to_path_buf(),
            candidates: candidates.iter().map(|s| s.to_string()).collect(),
        })
}

/// Loads an HF CLIP folder (`config.json` + weights) for inference.
pub fn load_hf_clip(dir: &Path, device: &Device) -> std::result::Result<ClipModel, ClipError> {
    let cfg = ClipConfig::from_file(&dir.join("config.json"))?;
    let weights = CheckedWeights::open(&hf_weights_file(dir)?)?;
    weights.build(DType::F32, device, |vb| ClipModel::new(&cfg, vb))
}

/// Loads an OpenCLIP checkpoint (HPSv2's `{'state_dict': …}` pickle or a safetensors file in
/// OpenCLIP naming) with the architecture `cfg`.
pub fn load_open_clip(
    path: &Path,
    cfg: &ClipConfig,
    device: &Device,
) -> std::result::Result<ClipModel, ClipError> {
    let tensors = open_clip_to_hf(read_tensors(path)?)?;
    CheckedWeights::new(path, tensors).build(DType::F32, device, |vb| ClipModel::new(cfg, vb))
}

/// Loads an HF CLIP folder as trainable variables in `varmap` (f32) and builds the model on
/// them: the starting point for fine-tuning (the PickScore analogue, the SPM's parent).
pub fn load_hf_clip_trainable(
    dir: &Path,
    varmap: &VarMap,
    device: &Device,
) -> std::result::Result<ClipModel, ClipError> {
    let cfg = ClipConfig::from_file(&dir.join("config.json"))?;
    let weights = CheckedWeights::open(&hf_weights_file(dir)?)?;
    weights.build(DType::F32, device, |vb| ClipModel::new(&cfg, vb))?;
    weights.copy_used_into(varmap, device)?;
    Ok(ClipModel::new(
        &cfg,
        VarBuilder::from_varmap(varmap, DType::F32, device),
    )?)
}
