//! Writes a LoRA trained by spo-pipe for diffusers to load:
//! `tests/fixtures/diffusion/rust_lora/{lora,expected}.safetensors`.
//!
//! It loads the tiny SD-shaped UNet golden, adds a rank-4, α = 2 adapter (PEFT gaussian init,
//! seed 11), takes two AdamW steps on Σ out·w, saves the adapter with `save_lora`, and records
//! the adapted output on the golden inputs. `make_goldens.py --check-rust-lora` then loads the
//! file through diffusers' `load_lora_weights` and compares.
//!
//!     cargo run --release -p spo-diffusion --example write_lora_fixture

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::VarMap;
use spo_diffusion::weights::{checked_var_builder, load_safetensors};
use spo_diffusion::{LoraConfig, UNet2DConditionConfig, UNet2DConditionModel};
use spo_nn::{AdamW, AdamWConfig, named_vars, seeded_var_builder};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dev = Device::Cpu;
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/diffusion");
    let config: UNet2DConditionConfig =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("unet_sd.json"))?)?;
    let weights = load_safetensors(&fixtures.join("unet_sd.safetensors"), &dev)?;
    let mut unet = UNet2DConditionModel::new(
        &config,
        checked_var_builder(weights, "unet_sd", DType::F32, &dev),
    )?;
    let io = load_safetensors(&fixtures.join("unet_sd_io.safetensors"), &dev)?;
    let input = |k: &str| io.get(k).ok_or_else(|| format!("golden `{k}` missing"));
    let (sample, t, ctx, w) = (
        input("sample")?,
        input("timesteps")?,
        input("context")?,
        input("loss_weights")?,
    );

    let lora_map = VarMap::new();
    let lora = LoraConfig {
        lora_alpha: 2.0,
        ..LoraConfig::spo(4)
    };
    unet.add_lora(&lora, &seeded_var_builder(&lora_map, 11, DType::F32, &dev))?;
    let mut opt = AdamW::new(
        named_vars(&lora_map)?,
        AdamWConfig {
            lr: 1e-2,
            ..AdamWConfig::default()
        },
    )?;
    for _ in 0..2 {
        let loss = (unet.forward(sample, t, ctx, None)? * w)?.sum_all()?;
        opt.step(&loss.backward()?)?;
    }

    let out_dir = fixtures.join("rust_lora");
    std::fs::create_dir_all(&out_dir)?;
    unet.save_lora(&out_dir.join("lora.safetensors"))?;
    let out = unet.forward(sample, t, ctx, None)?;
    candle_core::safetensors::save(
        &[("out".to_string(), out)].into_iter().collect(),
        out_dir.join("expected.safetensors"),
    )?;
    println!("wrote {}", out_dir.display());
    Ok(())
}
