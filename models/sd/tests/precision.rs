//! Frozen weights in half precision (f16; bf16 on CUDA), as the reference code runs them on a
//! GPU: sampling stays within half precision's error of the f32 pipeline, and the LoRA, kept in
//! f32, still gets a gradient through the half-precision UNet. And the memory estimate's
//! counts, checked against the loaded models.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use spo_diffusion::{DiffusersFolder, LoraConfig};
use spo_nn::SeededRng;
use spo_sd::Workload;
use spo_sd::memory::{PipelineShape, component_parameters, lora_parameters};
use spo_sd::{SampleSettings, StableDiffusion};

mod common;

use common::{TestResult, fixtures, rel_err};

fn open(dtype: DType) -> Result<StableDiffusion, Box<dyn std::error::Error>> {
    Ok(StableDiffusion::open(
        &fixtures().join("sd/sd15_tiny"),
        dtype,
        &Device::Cpu,
    )?)
}

fn sample(sd: &StableDiffusion) -> Result<Tensor, Box<dyn std::error::Error>> {
    let cond = sd.conditioning(&["a photo of a cat", "a red car"])?;
    let x = SeededRng::new(5).normal((2, 4, 8, 8), 0.0, 1.0, DType::F32, &Device::Cpu)?;
    let s = SampleSettings {
        steps: 4,
        cfg: 5.0,
        eta: 0.0,
    };
    let latents = sd.denoise(&cond, &x, &s, &mut SeededRng::new(0))?;
    Ok(sd.decode(&latents)?)
}

#[test]
fn half_precision_sampling_stays_near_f32() -> TestResult {
    let reference = sample(&open(DType::F32)?)?;
    let images = sample(&open(DType::F16)?)?;
    assert_eq!(images.dtype(), DType::F32);
    // measured 7.2e-3 (f16's 11-bit mantissa through 4 guided steps and the decoder)
    let e = rel_err(&images, &reference)?;
    assert!(
        e < 1e-2,
        "f16 images: relative error {e:.2e} (tolerance 1e-2)"
    );
    assert!(e > 0.0, "the f16 pipeline computed in f32 after all");
    Ok(())
}

#[test]
fn an_f32_lora_on_half_precision_weights_gets_gradients() -> TestResult {
    let mut grads = Vec::new();
    for dtype in [DType::F32, DType::F16] {
        let mut sd = open(dtype)?;
        let varmap = VarMap::new();
        sd.add_trainable_lora(&LoraConfig::spo(4), &varmap, 3)?;
        // B starts at zero: give it values so that A's gradient is not zero too
        for (name, var) in varmap.data().lock().map_err(|_| "poisoned")?.iter() {
            if name.ends_with("lora_B.weight") {
                var.set(&(var.ones_like()? * 0.01)?)?;
            }
        }
        let cond = sd.conditioning(&["a photo of a cat"])?;
        let x = SeededRng::new(5).normal((1, 4, 8, 8), 0.0, 1.0, DType::F32, &Device::Cpu)?;
        let t = Tensor::new(&[500f32], &Device::Cpu)?;
        let eps = sd
            .unet()
            .forward(&x.to_dtype(dtype)?, &t, &cond.cond, None)?;
        let loss = eps.to_dtype(DType::F32)?.sqr()?.mean_all()?;
        let g = loss.backward()?;
        // by name: the map's own order differs between maps
        let data = varmap.data().lock().map_err(|_| "poisoned")?;
        let vars: std::collections::BTreeMap<_, _> = data.iter().collect();
        assert!(!vars.is_empty());
        let mut flat = Vec::new();
        for v in vars.values() {
            let gv = g.get(v).ok_or("a LoRA var got no gradient")?;
            assert_eq!(gv.dtype(), DType::F32);
            flat.push(gv.flatten_all()?);
        }
        grads.push(Tensor::cat(&flat, 0)?);
    }
    // measured 3.6e-3
    let e = rel_err(&grads[1], &grads[0])?;
    assert!(e < 2e-2, "f16 LoRA gradients: relative error {e:.2e}");
    Ok(())
}

#[test]
fn the_memory_estimate_counts_the_weights_and_the_lora_exactly() -> TestResult {
    let root = fixtures().join("sd/sd15_tiny");
    let folder = DiffusersFolder::open(&root)?;
    let shape = PipelineShape::of_folder(&folder)?;
    // the headers' counts are the loaded tensors' elements
    let loaded: u64 = spo_diffusion::weights::load_safetensors(
        &root.join("unet/diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
    )?
    .values()
    .map(|t| t.elem_count() as u64)
    .sum();
    assert_eq!(shape.unet_parameters, loaded);
    assert_eq!(component_parameters(&root.join("unet"))?, loaded);
    // the LoRA count is what add_trainable_lora creates
    let mut sd = open(DType::F32)?;
    let varmap = VarMap::new();
    sd.add_trainable_lora(&LoraConfig::spo(4), &varmap, 0)?;
    let created: u64 = varmap
        .all_vars()
        .iter()
        .map(|v| v.elem_count() as u64)
        .sum();
    assert_eq!(lora_parameters(&shape.unet, 4)?, created);

    let f32_sample = shape.estimate(DType::F32, Workload::Sample { batch: 2 })?;
    let f16_sample = shape.estimate(DType::F16, Workload::Sample { batch: 2 })?;
    let vae_bytes = 4 * shape.vae_parameters;
    assert_eq!(
        f32_sample.weights - vae_bytes,
        2 * (f16_sample.weights - vae_bytes)
    );
    assert_eq!(f32_sample.training_state, 0);
    let bigger = shape.estimate(DType::F32, Workload::Sample { batch: 8 })?;
    assert!(bigger.activations > f32_sample.activations);
    let train_as = |batch, checkpointing, guided| {
        shape.estimate(
            DType::F32,
            Workload::Train {
                batch,
                rollout_batch: 2,
                rank: 4,
                checkpointing,
                guided,
            },
        )
    };
    let train = |batch, checkpointing| train_as(batch, checkpointing, true);
    // an unguided step (Diffusion-DPO's, MaPO's) runs each latent once: keeping its graph, it
    // keeps as much as a guided step of half the latents
    for checkpointing in [false, true] {
        let unguided = train_as(4, checkpointing, false)?;
        assert!(unguided.activations < train(4, checkpointing)?.activations);
    }
    assert_eq!(
        train_as(4, false, false)?.activations,
        train(2, false)?.activations
    );
    let (one, four) = (train(1, false)?, train(4, false)?);
    assert!(
        one.training_state >= 16 * created,
        "the LoRA, its gradient and two moments"
    );
    assert!(four.activations > one.activations && one.activations > 0);
    // checkpointed, the step keeps less, and only one layer's frozen-weight gradients
    let (one_c, four_c) = (train(1, true)?, train(4, true)?);
    assert!(
        four_c.activations < four.activations,
        "{four_c:?} vs {four:?}"
    );
    assert!(four_c.activations > one_c.activations && one_c.activations > 0);
    assert!(one_c.training_state < one.training_state && one_c.training_state >= 16 * created);
    Ok(())
}

#[test]
fn a_weights_file_whose_header_is_not_safetensors_is_named_by_the_estimate() -> TestResult {
    let src = fixtures().join("sd/sd15_tiny");
    let dir = tempfile::tempdir()?;
    common::copy_folder(&src, dir.path())?;
    let unet = dir.path().join("unet/diffusion_pytorch_model.safetensors");
    std::fs::write(&unet, b"\xff\xff\xff\xff\xff\xff\xff\x7fnot a header")?;
    let e = PipelineShape::of_folder(&DiffusersFolder::open(dir.path())?)
        .err()
        .ok_or("a broken header was counted")?
        .to_string();
    assert!(
        e.contains("diffusion_pytorch_model.safetensors") && e.contains("not a safetensors header"),
        "{e}"
    );
    std::fs::write(&unet, b"\x08\0\0\0\0\0\0\0{\"a\": 1}")?;
    let e = PipelineShape::of_folder(&DiffusersFolder::open(dir.path())?)
        .err()
        .ok_or("a tensor without a shape was counted")?
        .to_string();
    assert!(e.contains("tensor `a` has no shape"), "{e}");
    Ok(())
}
