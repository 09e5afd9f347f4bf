//! LoRA adapters on linear layers, PEFT-style, with diffusers-compatible files.
//!
//! A [`LoraLinear`] computes `W·x + b + (α/r)·B·(A·x)` with `A: (r, in)` and `B: (out, r)`.
//! PEFT's `init_lora_weights="gaussian"` draws A ~ N(0, 1/r²) and sets B = 0, so a fresh
//! adapter changes nothing. All adapters of a model share one [`LoraSwitch`]: switching it off
//! gives the frozen base model (SPO's reference policy) without a second copy of the weights.
//!
//! Files: [`save_lora`] writes PEFT keys with diffusers' component prefix,
//! `unet.<module>.lora_A.weight` / `lora_B.weight`, plus the `lora_adapter_metadata` entry
//! (`{"unet.r", "unet.lora_alpha", "unet.target_modules"}`) that
//! `diffusers.loaders.StableDiffusionLoraLoaderMixin.load_lora_weights` reads to rebuild the
//! `LoraConfig`. [`load_lora`] also reads diffusers' `…lora.down.weight` / `…lora.up.weight`
//! dialect (what `convert_state_dict_to_diffusers` writes, e.g. the released SPO LoRAs).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{D, DType, Device, Module, Tensor};
use candle_nn::Linear;
use serde::{Deserialize, Serialize};
use spo_nn::linear::{forward_2d, linear_2d};

use crate::error::{DiffusionError, Result};

/// The modules PEFT targets in SPO (`target_modules`), relative to each attention block.
pub const SPO_TARGET_MODULES: [&str; 4] = ["to_q", "to_k", "to_v", "to_out.0"];

/// Adapter hyper-parameters (PEFT `LoraConfig` names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Rank r (SPO: 4 for SD 1.5, 64 for SDXL).
    pub r: usize,
    /// α; the update is scaled by α/r (SPO: α = r).
    pub lora_alpha: f64,
    /// Attention projections that get an adapter (SPO: to_q, to_k, to_v, to_out.0).
    pub target_modules: Vec<String>,
}

impl LoraConfig {
    /// SPO's adapter: rank `r`, α = r, on to_q/to_k/to_v/to_out.0.
    pub fn spo(r: usize) -> Self {
        Self {
            r,
            lora_alpha: r as f64,
            target_modules: SPO_TARGET_MODULES.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// α/r.
    pub fn scale(&self) -> f64 {
        self.lora_alpha / self.r as f64
    }

    /// The PEFT "gaussian" init of A: N(0, (1/r)²).
    pub fn init_a(&self) -> candle_nn::Init {
        candle_nn::Init::Randn {
            mean: 0.0,
            stdev: 1.0 / self.r as f64,
        }
    }
}

/// Shared state of every adapter of one model: on or off, and whether a forward through them
/// is differentiable (both true when created).
#[derive(Debug, Clone)]
pub struct LoraSwitch {
    enabled: Arc<AtomicBool>,
    tracked: Arc<AtomicBool>,
}

impl Default for LoraSwitch {
    fn default() -> Self {
        Self {
            enabled: Arc::new(AtomicBool::new(true)),
            tracked: Arc::new(AtomicBool::new(true)),
        }
    }
}

impl LoraSwitch {
    /// Turns the adapters on (policy) or off (frozen base / reference).
    pub fn set(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::Relaxed)
    }

    /// Whether the adapters are applied.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// With `false`, the adapters apply their tensors detached: the same values, but a
    /// forward through trainable adapters records no graph, so it keeps no activations alive
    /// (a rollout's calls, which are never differentiated).
    pub fn set_tracked(&self, tracked: bool) {
        self.tracked.store(tracked, Ordering::Relaxed)
    }

    /// Whether a forward through the adapters is differentiable.
    pub fn tracked(&self) -> bool {
        self.tracked.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone)]
struct Adapter {
    a: Tensor,
    b: Tensor,
    scale: f64,
    switch: LoraSwitch,
}

/// A linear layer that may carry a LoRA adapter.
#[derive(Debug, Clone)]
pub struct LoraLinear {
    base: Linear,
    adapter: Option<Adapter>,
}

impl LoraLinear {
    /// A plain linear layer, no adapter yet.
    pub fn new(base: Linear) -> Self {
        Self {
            base,
            adapter: None,
        }
    }

    /// (out, in) of the base weight.
    pub fn dims(&self) -> Result<(usize, usize)> {
        Ok(self.base.weight().dims2()?)
    }

    /// Attaches `a: (r, in)`, `b: (out, r)` with scale α/r, controlled by `switch`.
    pub fn attach(&mut self, a: Tensor, b: Tensor, scale: f64, switch: LoraSwitch) {
        self.adapter = Some(Adapter {
            a,
            b,
            scale,
            switch,
        });
    }

    /// `(A, B)` of the adapter, if any.
    pub fn adapter(&self) -> Option<(&Tensor, &Tensor)> {
        self.adapter.as_ref().map(|ad| (&ad.a, &ad.b))
    }

    /// Folds the adapter into the base weight (`W ← W + (α/r)·B·A`) and drops it.
    pub fn merge(&mut self) -> Result<()> {
        if let Some(ad) = self.adapter.take() {
            let delta = (ad.b.matmul(&ad.a)? * ad.scale)?.to_dtype(self.base.weight().dtype())?;
            let weight = (self.base.weight().detach() + delta)?;
            self.base = Linear::new(weight, self.base.bias().cloned());
        }
        Ok(())
    }
}

impl Module for LoraLinear {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        // one 2-D GEMM over all leading dimensions (see spo_nn::linear::forward_2d)
        let ys = forward_2d(&self.base, xs)?;
        match &self.adapter {
            Some(ad) if ad.switch.enabled() => {
                // (α/r)·B·(A·x), in the adapter's dtype (f32 for training)
                let (a, b) = if ad.switch.tracked() {
                    (ad.a.clone(), ad.b.clone())
                } else {
                    (ad.a.detach(), ad.b.detach())
                };
                let x = xs.to_dtype(a.dtype())?;
                let (n, in_dim) = (x.elem_count() / x.dim(D::Minus1)?, x.dim(D::Minus1)?);
                let down = linear_2d(&x.contiguous()?.reshape((n, in_dim))?, &a, None)?;
                let up = (linear_2d(&down, &b, None)? * ad.scale)?;
                let up = up.reshape(ys.shape())?.to_dtype(ys.dtype())?;
                ys + up
            }
            _ => Ok(ys),
        }
    }
}

/// The key of the file that holds tensor `kind` ("lora_A"/"lora_B") of module `path`.
pub fn peft_key(component: &str, path: &str, kind: &str) -> String {
    format!("{component}.{path}.{kind}.weight")
}

/// Writes adapter tensors named `<module>.lora_A.weight` / `.lora_B.weight` (relative to the
/// component) as `<component>.<name>` with diffusers' `lora_adapter_metadata`.
pub fn save_lora(
    path: &Path,
    component: &str,
    tensors: &[(String, Tensor)],
    config: &LoraConfig,
) -> Result<()> {
    let mut data: Vec<(String, Tensor)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        data.push((
            format!("{component}.{name}"),
            t.to_dtype(DType::F32)?.contiguous()?,
        ));
    }
    data.sort_by(|a, b| a.0.cmp(&b.0));
    let metadata = serde_json::json!({
        format!("{component}.r"): config.r,
        format!("{component}.lora_alpha"): config.lora_alpha,
        format!("{component}.target_modules"): config.target_modules,
    });
    let mut info = HashMap::new();
    info.insert("format".to_string(), "pt".to_string());
    info.insert("lora_adapter_metadata".to_string(), metadata.to_string());
    let failed = |message: String| DiffusionError::Safetensors {
        path: path.to_path_buf(),
        message,
    };
    let bytes = safetensors::serialize(data, Some(info)).map_err(|e| failed(e.to_string()))?;
    let bytes = sorted_header(&bytes).map_err(failed)?;
    std::fs::write(path, bytes).map_err(|source| DiffusionError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// `file` (safetensors bytes) with the keys of its JSON header, `__metadata__` included, in
/// sorted order: safetensors writes `__metadata__` from a `HashMap`, whose order changes from
/// process to process, so the same adapter would otherwise get different bytes.
fn sorted_header(file: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let len: [u8; 8] = file
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or("no header length")?;
    let end = usize::try_from(u64::from_le_bytes(len))
        .ok()
        .and_then(|n| n.checked_add(8))
        .filter(|&end| end <= file.len())
        .ok_or("header length beyond the file")?;
    let mut header: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&file[8..end]).map_err(|e| e.to_string())?;
    if let Some(meta) = header.get_mut("__metadata__") {
        let sorted: BTreeMap<String, String> =
            serde_json::from_value(meta.take()).map_err(|e| e.to_string())?;
        *meta = serde_json::to_value(sorted).map_err(|e| e.to_string())?;
    }
    let mut json = serde_json::to_vec(&header).map_err(|e| e.to_string())?;
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + json.len() + file.len() - end);
    out.extend((json.len() as u64).to_le_bytes());
    out.extend(json);
    out.extend(&file[end..]);
    Ok(out)
}

/// A LoRA file read back: tensors keyed `<module>.lora_A.weight` / `.lora_B.weight` relative
/// to the component, and the config when the file records one.
#[derive(Debug, Clone)]
pub struct LoraFile {
    /// Adapter tensors in PEFT naming, without the component prefix.
    pub tensors: HashMap<String, Tensor>,
    /// r, α and targets from `lora_adapter_metadata`, if present.
    pub config: Option<LoraConfig>,
}

impl LoraFile {
    /// The config: the recorded one, else r from the tensors' shapes and α = r (diffusers'
    /// rule when no alphas are stored), targets from the module names.
    pub fn config_or_inferred(&self) -> Result<LoraConfig> {
        if let Some(c) = &self.config {
            return Ok(c.clone());
        }
        let mut r = None;
        let mut targets: Vec<String> = Vec::new();
        for (name, t) in &self.tensors {
            if let Some(module) = name.strip_suffix(".lora_A.weight") {
                r = Some(t.dim(0)?);
                let target = SPO_TARGET_MODULES
                    .iter()
                    .find(|m| module.ends_with(&format!(".{m}")))
                    .map(|m| m.to_string());
                if let Some(target) = target
                    && !targets.contains(&target)
                {
                    targets.push(target);
                }
            }
        }
        let r = r.ok_or_else(|| DiffusionError::Lora("file has no lora_A tensors".into()))?;
        targets.sort();
        Ok(LoraConfig {
            r,
            lora_alpha: r as f64,
            target_modules: targets,
        })
    }
}

/// Dialect table: diffusers' key suffixes → PEFT's.
const DIFFUSERS_TO_PEFT: [(&str, &str); 2] = [
    (".lora.down.weight", ".lora_A.weight"),
    (".lora.up.weight", ".lora_B.weight"),
];

/// Reads the adapter tensors of `component` from a LoRA safetensors file (PEFT or diffusers
/// key dialect) onto `device`.
pub fn load_lora(path: &Path, component: &str, device: &Device) -> Result<LoraFile> {
    let bytes = std::fs::read(path).map_err(|source| DiffusionError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let st_err = |message: String| DiffusionError::Safetensors {
        path: path.to_path_buf(),
        message,
    };
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| st_err(e.to_string()))?;
    let all = candle_core::safetensors::load_buffer(&bytes, device)?;
    let prefix = format!("{component}.");
    let mut tensors = HashMap::new();
    for (key, t) in all {
        let Some(rest) = key.strip_prefix(&prefix) else {
            continue;
        };
        let mut name = rest.to_string();
        for (from, to) in DIFFUSERS_TO_PEFT {
            if let Some(stem) = name.strip_suffix(from) {
                name = format!("{stem}{to}");
            }
        }
        tensors.insert(name, t);
    }
    if tensors.is_empty() {
        return Err(st_err(format!("no tensors under `{prefix}`")));
    }
    let config = match meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("lora_adapter_metadata"))
    {
        Some(json) => {
            let value: serde_json::Value =
                serde_json::from_str(json).map_err(|source| DiffusionError::Json {
                    path: path.to_path_buf(),
                    source,
                })?;
            let field = |f: &str| value.get(format!("{component}.{f}"));
            let r = field("r").and_then(|v| v.as_u64());
            let alpha = field("lora_alpha").and_then(|v| v.as_f64());
            let targets = field("target_modules").and_then(|v| {
                v.as_array().map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
            });
            match (r, alpha, targets) {
                (Some(r), Some(lora_alpha), Some(target_modules)) => Some(LoraConfig {
                    r: r as usize,
                    lora_alpha,
                    target_modules,
                }),
                _ => None,
            }
        }
        None => None,
    };
    Ok(LoraFile { tensors, config })
}

#[cfg(test)]
mod tests {
    use super::*;
    use spo_nn::SeededRng;

    #[test]
    fn fresh_adapter_is_a_no_op_and_merge_equals_adapter() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = SeededRng::new(0);
        let w = rng.normal((3, 5), 0.0, 1.0, DType::F32, &dev)?;
        let bias = rng.normal(3, 0.0, 1.0, DType::F32, &dev)?;
        let xs = rng.normal((2, 5), 0.0, 1.0, DType::F32, &dev)?;
        let mut layer = LoraLinear::new(Linear::new(w, Some(bias)));
        let plain = layer.forward(&xs)?;
        let switch = LoraSwitch::default();
        let a = rng.normal((2, 5), 0.0, 0.5, DType::F32, &dev)?;
        layer.attach(
            a.clone(),
            Tensor::zeros((3, 2), DType::F32, &dev)?,
            2.0,
            switch.clone(),
        );
        let diff = (layer.forward(&xs)? - &plain)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);

        let b = rng.normal((3, 2), 0.0, 1.0, DType::F32, &dev)?;
        layer.attach(a, b, 2.0, switch.clone());
        let adapted = layer.forward(&xs)?;
        switch.set(false);
        let off = (layer.forward(&xs)? - &plain)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert_eq!(off, 0.0);
        switch.set(true);
        layer.merge()?;
        assert!(layer.adapter().is_none());
        let merged = (layer.forward(&xs)? - adapted)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(merged < 1e-5, "{merged}");
        Ok(())
    }

    #[test]
    fn transposed_batched_input_gives_the_contiguous_result() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = SeededRng::new(1);
        let layer = LoraLinear::new(Linear::new(
            rng.normal((3, 8), 0.0, 1.0, DType::F32, &dev)?,
            None,
        ));
        let xs = rng
            .normal((2, 8, 5), 0.0, 1.0, DType::F32, &dev)?
            .transpose(1, 2)?;
        let viewed = layer.forward(&xs)?;
        let copied = layer.forward(&xs.contiguous()?)?;
        let diff = (viewed - copied)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
        Ok(())
    }

    #[test]
    fn save_then_load_round_trips_keys_and_config() -> Result<()> {
        let dev = Device::Cpu;
        let dir = std::env::temp_dir().join(format!("spo-lora-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|source| DiffusionError::Io {
            path: dir.clone(),
            source,
        })?;
        let path = dir.join("lora.safetensors");
        let a = Tensor::ones((2, 4), DType::F32, &dev)?;
        let b = Tensor::zeros((4, 2), DType::F32, &dev)?;
        let tensors = vec![
            ("mid.attn1.to_q.lora_A.weight".to_string(), a),
            ("mid.attn1.to_q.lora_B.weight".to_string(), b),
        ];
        let config = LoraConfig {
            r: 2,
            lora_alpha: 3.0,
            target_modules: vec!["to_q".into()],
        };
        save_lora(&path, "unet", &tensors, &config)?;
        let loaded = load_lora(&path, "unet", &dev)?;
        assert_eq!(loaded.config.as_ref(), Some(&config));
        let mut keys: Vec<&String> = loaded.tensors.keys().collect();
        keys.sort();
        assert_eq!(
            keys,
            vec![
                "mid.attn1.to_q.lora_A.weight",
                "mid.attn1.to_q.lora_B.weight"
            ]
        );
        // The same adapter gives the same bytes every time, in this process and in any other.
        let first = std::fs::read(&path).map_err(|source| DiffusionError::Io {
            path: path.clone(),
            source,
        })?;
        for _ in 0..16 {
            save_lora(&path, "unet", &tensors, &config)?;
            let again = std::fs::read(&path).map_err(|source| DiffusionError::Io {
                path: path.clone(),
                source,
            })?;
            assert!(again == first, "a second save wrote different bytes");
        }
        std::fs::remove_dir_all(&dir).map_err(|source| DiffusionError::Io { path: dir, source })?;
        Ok(())
    }
}
