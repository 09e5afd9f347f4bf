//! Parity of the SD-1.5 pipeline with diffusers' `StableDiffusionPipeline` (DDIM from the
//! folder's scheduler config) on a tiny random-weight folder in the real layouts.
//!
//! The folder and goldens come from `tests/fixtures/sd/make_sd15_tiny.py` (fixtures venv); CI
//! uses the committed files. Errors are relative to the reference's largest magnitude.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use spo_diffusion::weights::load_safetensors;
use spo_nn::SeededRng;
use spo_sd::{Conditioning, SampleSettings, StableDiffusion};

mod common;

use common::{TestResult, golden, rel_err};

fn fixtures() -> PathBuf {
    common::fixtures().join("sd")
}

/// DDIM 4 steps at CFG 5 from the golden's initial latents, against its final latents and
/// images (the settings both goldens were made with).
fn check_sampling(
    sd: &StableDiffusion,
    cond: &Conditioning,
    g: &HashMap<String, Tensor>,
) -> TestResult {
    let settings = SampleSettings {
        steps: 4,
        cfg: 5.0,
        eta: 0.0,
    };
    let latents = sd.denoise(
        cond,
        &golden(g, "latents")?,
        &settings,
        &mut SeededRng::new(0),
    )?;
    common::check(
        "final latents",
        &latents,
        &golden(g, "final_latents")?,
        1e-4,
    )?;
    common::check("images", &sd.decode(&latents)?, &golden(g, "images")?, 1e-4)
}

fn prompts() -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        fixtures().join("sd15_tiny_goldens.json"),
    )?)?;
    Ok(json["prompts"]
        .as_array()
        .ok_or("no prompts in the goldens")?
        .iter()
        .filter_map(|p| p.as_str().map(str::to_owned))
        .collect())
}

#[test]
fn tokens_text_states_latents_and_images_match_diffusers() -> TestResult {
    let dev = Device::Cpu;
    let g = load_safetensors(&fixtures().join("sd15_tiny_goldens.safetensors"), &dev)?;
    let sd = StableDiffusion::open(&fixtures().join("sd15_tiny"), DType::F32, &dev)?;
    assert_eq!(sd.latent_shape(), [4, 8, 8]);
    assert_eq!(sd.image_size(), [16, 16]);
    let prompts = prompts()?;
    let texts: Vec<&str> = prompts.iter().map(String::as_str).collect();

    // The tokenizer pads with end-of-text, as SD-1.5's does; the negative prompt is "".
    let ids = sd.text_encoders()[0]
        .token_ids(&texts)?
        .to_dtype(DType::I64)?;
    assert_eq!(ids.to_vec2::<i64>()?, golden(&g, "ids")?.to_vec2::<i64>()?);
    let empty = sd.text_encoders()[0]
        .token_ids(&["", ""])?
        .to_dtype(DType::I64)?;
    assert_eq!(
        empty.to_vec2::<i64>()?,
        golden(&g, "negative_ids")?.to_vec2::<i64>()?
    );

    let cond = sd.conditioning(&texts)?;
    let e = rel_err(&cond.cond, &golden(&g, "hidden")?)?;
    assert!(e < 1e-5, "text encoder states: relative error {e:.2e}");

    check_sampling(&sd, &cond, &g)?;
    Ok(())
}

#[test]
fn eta_draws_its_noise_from_the_rng_only() -> TestResult {
    let dev = Device::Cpu;
    let sd = StableDiffusion::open(&fixtures().join("sd15_tiny"), DType::F32, &dev)?;
    let cond = sd.conditioning(&["a cat"])?;
    let x = SeededRng::new(3).normal((1, 4, 8, 8), 0.0, 1.0, DType::F32, &dev)?;
    let s = SampleSettings {
        steps: 3,
        cfg: 5.0,
        eta: 1.0,
    };
    let run = |seed| sd.denoise(&cond, &x, &s, &mut SeededRng::new(seed));
    let (a, b, c) = (run(1)?, run(1)?, run(2)?);
    assert_eq!(rel_err(&a, &b)?, 0.0, "same seed, same latents");
    assert!(rel_err(&a, &c)? > 1e-3, "another seed, other noise");
    Ok(())
}

/// Copies the fixture folder with the text encoder's tensors renamed `text_model.*`, as
/// transformers 4 saved them (SD-1.5's and SDXL's repos), and checks the states are the same.
#[test]
fn text_encoder_weights_saved_by_transformers_4_load_the_same() -> TestResult {
    let dev = Device::Cpu;
    let src = fixtures().join("sd15_tiny");
    let dir = tempfile::tempdir()?;
    common::copy_folder(&src, dir.path())?;
    let weights = dir.path().join("text_encoder/model.safetensors");
    let renamed: HashMap<String, Tensor> = load_safetensors(&weights, &dev)?
        .into_iter()
        .map(|(k, v)| (format!("text_model.{k}"), v))
        .collect();
    candle_core::safetensors::save(&renamed, &weights)?;
    let states = |root: &Path| -> Result<Tensor, Box<dyn std::error::Error>> {
        let sd = StableDiffusion::open(root, DType::F32, &dev)?;
        Ok(sd.text_encoders()[0].last_hidden_state(&["a photo of a cat"])?)
    };
    assert_eq!(rel_err(&states(dir.path())?, &states(&src)?)?, 0.0);
    Ok(())
}

#[test]
fn sdxl_tokens_conditioning_latents_and_images_match_diffusers() -> TestResult {
    let dev = Device::Cpu;
    let g = load_safetensors(&fixtures().join("sdxl_tiny_goldens.safetensors"), &dev)?;
    let sd = StableDiffusion::open(&fixtures().join("sdxl_tiny"), DType::F32, &dev)?;
    assert_eq!(sd.architecture(), spo_diffusion::Architecture::Sdxl);
    assert_eq!(sd.image_size(), [16, 16]);
    let prompts = prompts()?;
    let texts: Vec<&str> = prompts.iter().map(String::as_str).collect();

    // The second tokenizer pads with `!` (id 0), as SDXL's does.
    for (enc, key) in sd.text_encoders().iter().zip(["ids", "ids_2"]) {
        let ids = enc.token_ids(&texts)?.to_dtype(DType::I64)?;
        assert_eq!(
            ids.to_vec2::<i64>()?,
            golden(&g, key)?.to_vec2::<i64>()?,
            "{key}"
        );
    }
    let cond = sd.conditioning(&texts)?;
    let (added, added_uncond) = cond.added.as_ref().ok_or("SDXL has added conditioning")?;
    for (what, ours, key) in [
        ("penultimate states", &cond.cond, "cond"),
        ("pooled projection", &added.text_embeds, "pooled"),
    ] {
        let e = rel_err(ours, &golden(&g, key)?)?;
        assert!(e < 1e-5, "{what}: relative error {e:.2e}");
    }
    // force_zeros_for_empty_prompt: the negative branch is zeros.
    assert_eq!(cond.uncond.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
    assert_eq!(
        added_uncond
            .text_embeds
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?,
        0.0
    );
    assert_eq!(
        added.time_ids.to_vec2::<f32>()?,
        vec![vec![16.0, 16.0, 0.0, 0.0, 16.0, 16.0]; 2]
    );

    check_sampling(&sd, &cond, &g)?;
    Ok(())
}
