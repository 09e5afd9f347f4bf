//! Reading safetensors weights into a `VarBuilder` whose errors name the missing or misshaped
//! tensor by its full dotted key, its expected shape and the file it was looked up in.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

use crate::error::{DiffusionError, Result};

/// Every tensor of one safetensors file, on `device`.
pub fn load_safetensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let bytes = std::fs::read(path).map_err(|source| DiffusionError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| DiffusionError::Safetensors {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

struct CheckedTensors {
    tensors: HashMap<String, Tensor>,
    source: String,
}

impl SimpleBackend for CheckedTensors {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.tensors.get(name).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "missing weight `{name}` (expected shape {:?}) in {}",
                s.dims(),
                self.source
            ))
        })?;
        if t.shape() != &s {
            candle_core::bail!(
                "weight `{name}` in {} has shape {:?}, expected {:?}",
                self.source,
                t.dims(),
                s.dims()
            );
        }
        t.to_device(dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self.tensors.get(name).ok_or_else(|| {
            candle_core::Error::Msg(format!("missing weight `{name}` in {}", self.source))
        })?;
        t.to_device(dev)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// A `VarBuilder` over `tensors` (frozen weights) that converts them to `dtype` on `device`;
/// `source` (usually the file path) appears in every lookup error.
pub fn checked_var_builder(
    tensors: HashMap<String, Tensor>,
    source: &str,
    dtype: DType,
    device: &Device,
) -> VarBuilder<'static> {
    let backend = CheckedTensors {
        tensors,
        source: source.to_string(),
    };
    VarBuilder::from_backend(Box::new(backend), dtype, device.clone())
}

/// The safetensors files of a diffusers component folder: a single
/// `diffusion_pytorch_model.safetensors` (or `.fp16.safetensors`), or the shards listed in
/// `diffusion_pytorch_model.safetensors.index.json`; a transformers component (a text
/// encoder) names the same files `model.*`.
pub fn component_weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    const STEMS: [&str; 2] = ["diffusion_pytorch_model", "model"];
    for stem in STEMS {
        for name in [
            format!("{stem}.safetensors"),
            format!("{stem}.fp16.safetensors"),
        ] {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(vec![p]);
            }
        }
    }
    let index = STEMS
        .iter()
        .map(|stem| dir.join(format!("{stem}.safetensors.index.json")))
        .find(|p| p.is_file())
        .unwrap_or_else(|| dir.join("diffusion_pytorch_model.safetensors.index.json"));
    let text = std::fs::read_to_string(&index).map_err(|source| DiffusionError::Io {
        path: index.clone(),
        source,
    })?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| DiffusionError::Json {
            path: index.clone(),
            source,
        })?;
    let mut files: Vec<PathBuf> = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .map(|m| {
            m.values()
                .filter_map(|v| v.as_str())
                .map(|f| dir.join(f))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files.dedup();
    if files.is_empty() {
        return Err(DiffusionError::Safetensors {
            path: index,
            message: "no `weight_map` entries".into(),
        });
    }
    Ok(files)
}

/// A checked `VarBuilder` over all weight files of a diffusers component folder.
pub fn component_var_builder(
    dir: &Path,
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>> {
    let mut tensors = HashMap::new();
    for file in component_weight_files(dir)? {
        tensors.extend(load_safetensors(&file, &Device::Cpu)?);
    }
    Ok(checked_var_builder(
        tensors,
        &dir.display().to_string(),
        dtype,
        device,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_misshaped_weights_name_key_and_shape() -> Result<()> {
        let mut tensors = HashMap::new();
        tensors.insert(
            "a.weight".to_string(),
            Tensor::zeros((2, 3), DType::F32, &Device::Cpu)?,
        );
        let vb = checked_var_builder(tensors, "model.safetensors", DType::F32, &Device::Cpu);
        let missing = vb
            .pp("b")
            .get((4, 5), "weight")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            missing.contains("`b.weight`") && missing.contains("[4, 5]"),
            "{missing}"
        );
        let wrong = vb
            .pp("a")
            .get((3, 2), "weight")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            wrong.contains("`a.weight`") && wrong.contains("[3, 2]") && wrong.contains("[2, 3]"),
            "{wrong}"
        );
        Ok(())
    }
}
