//! What spo-sd's golden tests share: where the fixtures are, a golden by name, the error
//! measure. Errors are relative to the reference's largest magnitude.
#![allow(dead_code)] // each test binary uses its own subset

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use spo_sd::StableDiffusion;

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The repository's `tests/fixtures`.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// Trainable variables by name.
pub type Vars = Vec<(String, Var)>;

/// The tiny SD-1.5 pipeline in f32 on the CPU with the SPO-step golden's LoRA (rank 4, the PEFT
/// LoRA `make_spo_step.py` saved) loaded as trainable variables, and those variables.
pub fn tiny_sd15_with_lora() -> Result<(StableDiffusion, Vars), Box<dyn std::error::Error>> {
    let mut sd = StableDiffusion::open(&fixtures().join("sd/sd15_tiny"), DType::F32, &Device::Cpu)?;
    let varmap = VarMap::new();
    let lora = sd.load_trainable_lora(
        &fixtures().join("sd/sd15_tiny_spo_lora.safetensors"),
        &varmap,
    )?;
    assert_eq!((lora.r, lora.lora_alpha), (4, 4.0));
    let vars = spo_nn::named_vars(&varmap)?;
    Ok((sd, vars))
}

/// Copies a diffusers folder (files at the top and one level down) into `to`.
pub fn copy_folder(from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            std::fs::create_dir(&dest)?;
            for f in std::fs::read_dir(entry.path())? {
                let f = f?;
                std::fs::copy(f.path(), dest.join(f.file_name()))?;
            }
        } else {
            std::fs::copy(entry.path(), dest)?;
        }
    }
    Ok(())
}

/// The golden `key` of a goldens file.
pub fn golden(g: &HashMap<String, Tensor>, key: &str) -> Result<Tensor, String> {
    g.get(key)
        .cloned()
        .ok_or_else(|| format!("golden `{key}` missing"))
}

/// max |ours − theirs| / max |theirs|, in f64.
pub fn rel_err(ours: &Tensor, theirs: &Tensor) -> candle_core::Result<f64> {
    let (ours, theirs) = (ours.to_dtype(DType::F64)?, theirs.to_dtype(DType::F64)?);
    let diff = (&ours - &theirs)?.abs()?.max_all()?.to_scalar::<f64>()?;
    Ok(diff / theirs.abs()?.max_all()?.to_scalar::<f64>()?.max(1e-12))
}

/// Asserts `rel_err(ours, theirs) <= tol`, naming `what`.
pub fn check(what: &str, ours: &Tensor, theirs: &Tensor, tol: f64) -> TestResult {
    let e = rel_err(ours, theirs)?;
    assert!(
        e <= tol,
        "{what}: relative error {e:.2e} (tolerance {tol:.0e})"
    );
    Ok(())
}

/// Checks the gradient of every LoRA variable in `grads` against the golden `{prefix}.{name}`
/// within `tol`, naming `how` they were had; the goldens hold one per variable.
pub fn check_lora_grads(
    how: &str,
    vars: &[(String, Var)],
    grads: &GradStore,
    g: &HashMap<String, Tensor>,
    prefix: &str,
    tol: f64,
) -> TestResult {
    let goldens = g
        .keys()
        .filter(|k| k.starts_with(&format!("{prefix}.")))
        .count();
    assert_eq!(
        vars.len(),
        goldens,
        "{how}: LoRA variables vs golden gradients"
    );
    for (name, var) in vars {
        let ours = grads
            .get(var)
            .ok_or_else(|| format!("{how}: no gradient for {name}"))?;
        check(
            &format!("{how}: gradient of {name}"),
            ours,
            &golden(g, &format!("{prefix}.{name}"))?,
            tol,
        )?;
    }
    Ok(())
}
