//! Reading released weight files and checking them against the model that asks for them.
//!
//! Files are read whole into a name → tensor map: safetensors, or PyTorch pickles (`.pt`,
//! `.pth`, `.bin`, `.ckpt`) through candle's pickle reader, including HPSv2's
//! `{'state_dict': …}` wrapper. Key layouts are converted here, once, to the HF transformers
//! names the model code uses:
//! - [`open_clip_to_hf`]: OpenCLIP (HPSv2) → HF, the rules of transformers'
//!   `convert_clip_original_pytorch_to_hf.py`: `in_proj_{weight,bias}` split into q/k/v,
//!   `c_fc`/`c_proj` → `fc1`/`fc2`, `ln_1`/`ln_2` → `layer_norm1`/`layer_norm2`, and the two
//!   projections transposed;
//! - [`strip_prefix`]: the SPM release's `model.` prefix.
//!
//! [`CheckedWeights::var_builder`] hands the map to a model constructor. Every tensor the model
//! asks for is checked: a missing key, a wrong shape or a non-float dtype becomes a
//! [`ClipError`] naming the key and the expected shape (candle's own `VarBuilder` errors name
//! neither the file nor, for a shape mismatch, the tensor). Float tensors are cast to the
//! model's dtype, so float16 releases load into an f32 model.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};

use crate::error::ClipError;

/// Reads every tensor of a safetensors file or a PyTorch pickle (on the CPU, as stored).
pub fn read_tensors(path: &Path) -> Result<HashMap<String, Tensor>, ClipError> {
    if !path.is_file() {
        return Err(ClipError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        });
    }
    let format_err = |source| ClipError::WeightsFormat {
        path: path.to_path_buf(),
        source,
    };
    let is_safetensors = path.extension().is_some_and(|e| e == "safetensors");
    if is_safetensors {
        return candle_core::safetensors::load(path, &Device::Cpu).map_err(format_err);
    }
    // HPSv2 wraps its state dict as {'state_dict': …}; plain `torch.save(state_dict)` files
    // (ImageReward, the SPM release, the aesthetic head) have no wrapper.
    let tensors = match candle_core::pickle::read_all_with_key(path, Some("state_dict")) {
        Ok(t) => t,
        Err(_) => candle_core::pickle::read_all_with_key(path, None).map_err(format_err)?,
    };
    Ok(tensors.into_iter().collect())
}

/// Renames OpenCLIP keys to HF CLIP keys (see the module doc); other keys pass through.
pub fn open_clip_to_hf(
    tensors: HashMap<String, Tensor>,
) -> candle_core::Result<HashMap<String, Tensor>> {
    let mut out = HashMap::with_capacity(tensors.len() + 64);
    for (key, t) in tensors {
        let (tower, rest) = if let Some(rest) = key.strip_prefix("visual.") {
            ("vision_model", rest)
        } else {
            ("text_model", key.as_str())
        };
        let simple = match (tower, rest) {
            ("vision_model", "conv1.weight") => Some("embeddings.patch_embedding.weight"),
            ("vision_model", "class_embedding") => Some("embeddings.class_embedding"),
            ("vision_model", "positional_embedding") => {
                Some("embeddings.position_embedding.weight")
            }
            ("vision_model", "ln_pre.weight") => Some("pre_layrnorm.weight"),
            ("vision_model", "ln_pre.bias") => Some("pre_layrnorm.bias"),
            ("vision_model", "ln_post.weight") => Some("post_layernorm.weight"),
            ("vision_model", "ln_post.bias") => Some("post_layernorm.bias"),
            ("text_model", "token_embedding.weight") => Some("embeddings.token_embedding.weight"),
            ("text_model", "positional_embedding") => Some("embeddings.position_embedding.weight"),
            ("text_model", "ln_final.weight") => Some("final_layer_norm.weight"),
            ("text_model", "ln_final.bias") => Some("final_layer_norm.bias"),
            _ => None,
        };
        if let Some(name) = simple {
            out.insert(format!("{tower}.{name}"), t);
            continue;
        }
        match (tower, rest) {
            ("vision_model", "proj") => {
                out.insert("visual_projection.weight".into(), t.t()?.contiguous()?);
                continue;
            }
            ("text_model", "text_projection") => {
                out.insert("text_projection.weight".into(), t.t()?.contiguous()?);
                continue;
            }
            ("text_model", "logit_scale") => {
                out.insert("logit_scale".into(), t);
                continue;
            }
            // A non-persistent buffer in OpenCLIP, rebuilt by the text tower.
            ("text_model", "attn_mask") => continue,
            _ => {}
        }
        let Some(block) = rest.strip_prefix("transformer.resblocks.") else {
            out.insert(key, t);
            continue;
        };
        let Some((index, param)) = block.split_once('.') else {
            out.insert(key, t);
            continue;
        };
        let layer = format!("{tower}.encoder.layers.{index}");
        match param {
            "attn.in_proj_weight" | "attn.in_proj_bias" => {
                let suffix = if param.ends_with("weight") {
                    "weight"
                } else {
                    "bias"
                };
                let third = t.dim(0)? / 3;
                for (i, proj) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
                    let part = t.narrow(0, i * third, third)?.contiguous()?;
                    out.insert(format!("{layer}.self_attn.{proj}.{suffix}"), part);
                }
            }
            _ => {
                let renamed = param
                    .replacen("attn.out_proj.", "self_attn.out_proj.", 1)
                    .replacen("ln_1.", "layer_norm1.", 1)
                    .replacen("ln_2.", "layer_norm2.", 1)
                    .replacen("mlp.c_fc.", "mlp.fc1.", 1)
                    .replacen("mlp.c_proj.", "mlp.fc2.", 1);
                out.insert(format!("{layer}.{renamed}"), t);
            }
        }
    }
    Ok(out)
}

/// Keeps the keys under `prefix` (e.g. `model.`), without it; drops the others.
pub fn strip_prefix(tensors: HashMap<String, Tensor>, prefix: &str) -> HashMap<String, Tensor> {
    tensors
        .into_iter()
        .filter_map(|(k, t)| k.strip_prefix(prefix).map(|s| (s.to_string(), t)))
        .collect()
}

/// A name → tensor map from one file, handed to model constructors through a checking
/// `VarBuilder`.
#[derive(Clone)]
pub struct CheckedWeights {
    path: PathBuf,
    tensors: Arc<HashMap<String, Tensor>>,
    failure: Arc<Mutex<Option<ClipError>>>,
    used: Arc<Mutex<Vec<String>>>,
}

impl CheckedWeights {
    /// Wraps already-renamed tensors read from `path` (the path is used in errors).
    pub fn new(path: &Path, tensors: HashMap<String, Tensor>) -> Self {
        Self {
            path: path.to_path_buf(),
            tensors: Arc::new(tensors),
            failure: Arc::new(Mutex::new(None)),
            used: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Reads `path` (see [`read_tensors`]) without renaming.
    pub fn open(path: &Path) -> Result<Self, ClipError> {
        Ok(Self::new(path, read_tensors(path)?))
    }

    /// The file the tensors came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file holds `key`.
    pub fn contains(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    /// A `VarBuilder` whose every lookup is checked and recorded.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }

    /// Builds a model with `build`, turning the first failed lookup into its [`ClipError`].
    pub fn build<T>(
        &self,
        dtype: DType,
        device: &Device,
        build: impl FnOnce(VarBuilder<'static>) -> candle_core::Result<T>,
    ) -> Result<T, ClipError> {
        let result = build(self.var_builder(dtype, device));
        let recorded = self.failure.lock().ok().and_then(|mut f| f.take());
        match (result, recorded) {
            (Ok(model), _) => Ok(model),
            (Err(_), Some(failure)) => Err(failure),
            (Err(e), None) => Err(ClipError::Candle(e)),
        }
    }

    /// Copies every tensor a successful [`build`](Self::build) used into `varmap` as trainable
    /// variables (f32), so a second build from `varmap` trains the loaded weights.
    pub fn copy_used_into(&self, varmap: &VarMap, device: &Device) -> Result<(), ClipError> {
        let used = self
            .used
            .lock()
            .map_err(|_| ClipError::Input("weights lock poisoned".into()))?
            .clone();
        let mut data = varmap
            .data()
            .lock()
            .map_err(|_| ClipError::Input("var map lock poisoned".into()))?;
        for key in used {
            if let Some(t) = self.tensors.get(&key) {
                let t = t.to_dtype(DType::F32)?.to_device(device)?;
                data.insert(key, candle_core::Var::from_tensor(&t)?);
            }
        }
        Ok(())
    }

    fn record(&self, err: ClipError) -> candle_core::Error {
        let msg = err.to_string();
        if let Ok(mut slot) = self.failure.lock()
            && slot.is_none()
        {
            *slot = Some(err);
        }
        candle_core::Error::Msg(msg)
    }
}

impl SimpleBackend for CheckedWeights {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let expected = s.dims().to_vec();
        let Some(t) = self.tensors.get(name) else {
            return Err(self.record(ClipError::MissingTensor {
                path: self.path.clone(),
                key: name.to_string(),
                expected,
            }));
        };
        if !t.dtype().is_float() {
            return Err(self.record(ClipError::DTypeMismatch {
                path: self.path.clone(),
                key: name.to_string(),
                expected,
                got: t.dtype(),
            }));
        }
        if t.dims() != expected.as_slice() {
            return Err(self.record(ClipError::ShapeMismatch {
                path: self.path.clone(),
                key: name.to_string(),
                expected,
                got: t.dims().to_vec(),
            }));
        }
        if let Ok(mut used) = self.used.lock() {
            used.push(name.to_string());
        }
        t.to_dtype(dtype)?.to_device(dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        match self.tensors.get(name) {
            Some(t) => t.to_dtype(dtype)?.to_device(dev),
            None => Err(self.record(ClipError::MissingTensor {
                path: self.path.clone(),
                key: name.to_string(),
                expected: Vec::new(),
            })),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(dims: &[usize], start: f32) -> Tensor {
        let n: usize = dims.iter().product();
        Tensor::arange(start, start + n as f32, &Device::Cpu)
            .and_then(|t| t.reshape(dims))
            .expect("small tensor")
    }

    #[test]
    fn open_clip_keys_map_to_hf_with_split_and_transpose() -> candle_core::Result<()> {
        let mut m = HashMap::new();
        m.insert("visual.proj".to_string(), t(&[4, 2], 0.0));
        m.insert("text_projection".to_string(), t(&[3, 2], 0.0));
        m.insert(
            "visual.transformer.resblocks.0.attn.in_proj_weight".to_string(),
            t(&[6, 2], 0.0),
        );
        m.insert(
            "transformer.resblocks.1.attn.in_proj_bias".to_string(),
            t(&[6], 0.0),
        );
        m.insert(
            "transformer.resblocks.1.mlp.c_fc.weight".to_string(),
            t(&[1], 0.0),
        );
        m.insert("visual.ln_pre.bias".to_string(), t(&[1], 0.0));
        m.insert("attn_mask".to_string(), t(&[1], 0.0));
        let out = open_clip_to_hf(m)?;
        assert_eq!(out["visual_projection.weight"].dims(), &[2, 4]);
        assert_eq!(
            out["visual_projection.weight"].to_vec2::<f32>()?[0],
            vec![0., 2., 4., 6.]
        );
        assert_eq!(out["text_projection.weight"].dims(), &[2, 3]);
        let k = &out["vision_model.encoder.layers.0.self_attn.k_proj.weight"];
        assert_eq!(k.to_vec2::<f32>()?, vec![vec![4., 5.], vec![6., 7.]]);
        let v = &out["text_model.encoder.layers.1.self_attn.v_proj.bias"];
        assert_eq!(v.to_vec1::<f32>()?, vec![4., 5.]);
        assert!(out.contains_key("text_model.encoder.layers.1.mlp.fc1.weight"));
        assert!(out.contains_key("vision_model.pre_layrnorm.bias"));
        assert!(!out.keys().any(|k| k.contains("attn_mask")));
        Ok(())
    }

    #[test]
    fn checked_lookups_name_the_key_and_the_expected_shape() {
        let mut m = HashMap::new();
        m.insert("a.weight".to_string(), t(&[2, 3], 0.0));
        m.insert(
            "ids".to_string(),
            Tensor::new(&[1u32, 2], &Device::Cpu).expect("tensor"),
        );
        let w = CheckedWeights::new(Path::new("w.safetensors"), m);
        let missing = w.build(DType::F32, &Device::Cpu, |vb| vb.get((4, 5), "b.weight"));
        match missing {
            Err(ClipError::MissingTensor { key, expected, .. }) => {
                assert_eq!(key, "b.weight");
                assert_eq!(expected, vec![4, 5]);
            }
            other => panic!("expected a missing-tensor error, got {other:?}"),
        }
        let shape = w.build(DType::F32, &Device::Cpu, |vb| {
            vb.pp("a").get((3, 2), "weight")
        });
        let msg = shape.as_ref().map(|_| ()).unwrap_err().to_string();
        assert!(
            matches!(shape, Err(ClipError::ShapeMismatch { .. })),
            "{msg}"
        );
        assert!(msg.contains("`a.weight`") && msg.contains("[3, 2]") && msg.contains("[2, 3]"));
        let dtype = w.build(DType::F32, &Device::Cpu, |vb| vb.get(2, "ids"));
        assert!(matches!(dtype, Err(ClipError::DTypeMismatch { .. })));
    }
}
