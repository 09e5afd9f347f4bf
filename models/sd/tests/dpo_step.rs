//! One Diffusion-DPO step, and MaPO's loss on the same batch, on the tiny SD-1.5 pipeline
//! against a PyTorch re-implementation of the Diffusion-DPO script's step and of MaPO's loss
//! (`tests/fixtures/sd/make_dpo_step.py`): the pairs' photographs prepared as the script's
//! torchvision transforms do, VAE-encoded, noised with one t and ε per pair, the policy's and
//! the LoRA-off reference's per-sample errors, both losses and their LoRA gradients — each
//! computed by the functions the `diffusion-dpo` and `mapo` stages call on real weights, with
//! candle's graph and checkpointed. Errors are relative to the reference's largest magnitude.

use candle_core::{DType, Device, Tensor};
use spo_clip::preprocess::{CropRounding, PilFilter, load_rgb, resize_centre_crop};
use spo_diffusion::NoiseSchedule;
use spo_diffusion::weights::load_safetensors;
use spo_methods::mapo::Mapo;
use spo_methods::{diffusion_dpo, per_sample_mse};

use spo_sd::spo::UnetBatch;

mod common;
use common::{TestResult, check, check_lora_grads, fixtures, golden, tiny_sd15_with_lora};

/// Each pair's caption, winner and loser (the second caption empty, as the script empties a
/// share of them).
const PAIRS: [(&str, &str, &str); 2] = [
    ("a photo of a cat", "astronaut_crop.png", "coffee_crop.png"),
    ("", "coffee_crop.png", "astronaut_crop.png"),
];
const TIMESTEPS: [i64; 2] = [151, 802];
/// The per-sample errors agree within 1.7e-7 (relative, f32 rounding); Diffusion-DPO's loss
/// multiplies the difference of four of them by β/2 = 2500, so its value and gradients agree
/// within about 1e-3 (measured 1.4e-3 and 1.1e-3 at most). A wrong sign, a missing ½ or a
/// reference with its LoRA on would be off by tens of percent.
const DPO_TOLERANCE: f64 = 5e-3;

#[test]
fn one_diffusion_dpo_step_and_mapo_loss_match_the_pytorch_reimplementation() -> TestResult {
    let dev = Device::Cpu;
    let g = load_safetensors(&fixtures().join("sd/sd15_tiny_dpo_step.safetensors"), &dev)?;
    let (sd, vars) = tiny_sd15_with_lora()?;

    // 1. winners then losers, prepared as torchvision's Resize + CenterCrop (no flip)
    let [h, w] = sd.image_size();
    assert_eq!(h, w);
    let names = PAIRS.iter().map(|p| p.1).chain(PAIRS.iter().map(|p| p.2));
    let mut values = Vec::new();
    for name in names {
        let photo = load_rgb(&fixtures().join("clip/images").join(name))?;
        let square = resize_centre_crop(
            &photo,
            w as u32,
            PilFilter::Bilinear,
            CropRounding::HalfEven,
        );
        for c in 0..3 {
            values.extend(square.pixels().map(|p| (p[c] as f32 / 255.0 - 0.5) / 0.5));
        }
    }
    let images = Tensor::from_vec(values, (4, 3, h, w), &dev)?;
    check("images", &images, &golden(&g, "images")?, 1e-6)?;

    // 2. VAE-encoded with the given latent noise
    let latents = sd.encode(&images, &golden(&g, "latent_noise")?)?;
    check("latents", &latents, &golden(&g, "latents")?, 1e-4)?;

    // 3. one t and one ε per pair, shared by its winner and loser
    let noise = golden(&g, "noise")?;
    let eps = Tensor::cat(&[&noise, &noise], 0)?;
    let ts = Tensor::new([TIMESTEPS, TIMESTEPS].concat().as_slice(), &dev)?;
    let x_t = NoiseSchedule::new(sd.scheduler().clone())?.add_noise(&latents, &eps, &ts)?;
    check("x_t", &x_t, &golden(&g, "x_t")?, 1e-4)?;
    let captions: Vec<&str> = PAIRS.iter().map(|p| p.0).collect();
    let (states, added) = sd.prompt_states(&captions)?;
    assert!(added.is_none());
    let context = Tensor::cat(&[&states, &states], 0)?;
    let batch = UnetBatch {
        x: &x_t,
        ts: &ts,
        context: &context,
        added: None,
    };

    // 4. the reference's errors, then the policy's with its graph and checkpointed (its four
    // rows in calls of 3 and 1), each loss and its LoRA gradients
    let unet = sd.unet();
    unet.set_lora_enabled(false);
    let reference = batch.predict(unet, 3, DType::F32);
    unet.set_lora_enabled(true);
    let reference = per_sample_mse(&reference?, &eps)?;
    check(
        "reference errors",
        &reference,
        &golden(&g, "errors_ref")?,
        1e-4,
    )?;
    let (rw, rl) = (reference.narrow(0, 0, 2)?, reference.narrow(0, 2, 2)?);
    for (how, micro_batch, checkpointing) in [("graph", 4, false), ("checkpointed", 3, true)] {
        let policy = || {
            batch
                .predict_for_training(unet, micro_batch, DType::F32, checkpointing)?
                .map(|pred| Ok(per_sample_mse(pred, &eps)?))
        };
        let (errors, backprop) = policy()?;
        check(
            &format!("{how}: errors"),
            &errors,
            &golden(&g, "errors")?,
            1e-4,
        )?;
        let (mw, ml) = (errors.narrow(0, 0, 2)?, errors.narrow(0, 2, 2)?);
        let dpo = diffusion_dpo::loss(&mw, &ml, &rw, &rl, 5000.0)?;
        check(
            &format!("{how}: Diffusion-DPO loss"),
            &dpo.loss.reshape(1)?,
            &golden(&g, "dpo_loss")?,
            DPO_TOLERANCE,
        )?;
        let grads = backprop.gradients(&dpo.loss)?;
        check_lora_grads(
            &format!("{how}, Diffusion-DPO"),
            &vars,
            &grads,
            &g,
            "dpo_grad",
            DPO_TOLERANCE,
        )?;

        let (errors, backprop) = policy()?;
        let (mw, ml) = (errors.narrow(0, 0, 2)?, errors.narrow(0, 2, 2)?);
        let mapo = Mapo {
            beta: 0.1,
            snr_value: 0.5,
            ..Mapo::default()
        }
        .loss(&mw, &ml)?;
        check(
            &format!("{how}: MaPO loss"),
            &mapo.reshape(1)?,
            &golden(&g, "mapo_loss")?,
            1e-4,
        )?;
        let grads = backprop.gradients(&mapo)?;
        check_lora_grads(
            &format!("{how}, MaPO"),
            &vars,
            &grads,
            &g,
            "mapo_grad",
            1e-4,
        )?;
    }
    Ok(())
}
