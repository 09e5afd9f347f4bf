//! Parity of spo-diffusion with PyTorch/diffusers/peft on tiny random-weight models.
//!
//! Goldens come from `tests/fixtures/diffusion/make_goldens.py` (run it with the fixtures venv to
//! regenerate); CI has no Python and uses the committed files. Errors are relative to the
//! largest magnitude of the reference: max|ours − theirs| / max|theirs|.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use spo_diffusion::weights::{checked_var_builder, load_safetensors};
use spo_diffusion::{
    Ddim, NoiseSchedule, SchedulerConfig, UNet2DConditionConfig, UNet2DConditionModel,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/diffusion")
}

fn load(name: &str) -> Result<HashMap<String, Tensor>, Box<dyn std::error::Error>> {
    Ok(load_safetensors(&fixtures().join(name), &Device::Cpu)?)
}

fn get<'a>(map: &'a HashMap<String, Tensor>, key: &str) -> Result<&'a Tensor, String> {
    map.get(key)
        .ok_or_else(|| format!("golden `{key}` missing"))
}

fn rel_err(ours: &Tensor, theirs: &Tensor) -> Result<f64, candle_core::Error> {
    let ours = ours.to_dtype(DType::F64)?;
    let theirs = theirs.to_dtype(DType::F64)?;
    let diff = (&ours - &theirs)?.abs()?.max_all()?.to_scalar::<f64>()?;
    let scale = theirs.abs()?.max_all()?.to_scalar::<f64>()?;
    Ok(diff / scale.max(1e-12))
}

fn abs_err(ours: &Tensor, theirs: &Tensor) -> Result<f64, candle_core::Error> {
    let diff = (ours.to_dtype(DType::F64)? - theirs.to_dtype(DType::F64)?)?;
    diff.abs()?.max_all()?.to_scalar::<f64>()
}

fn unet(name: &str) -> Result<UNet2DConditionModel, Box<dyn std::error::Error>> {
    let json = std::fs::read_to_string(fixtures().join(format!("{name}.json")))?;
    let config: UNet2DConditionConfig = serde_json::from_str(&json)?;
    let weights = load(&format!("{name}.safetensors"))?;
    let vb = checked_var_builder(weights, name, DType::F32, &Device::Cpu);
    Ok(UNet2DConditionModel::new(&config, vb)?)
}

#[test]
fn ddim_schedule_step_and_log_prob_match_diffusers_and_ddpo() -> TestResult {
    let g = load("scheduler.safetensors")?;
    let ddim = Ddim::new(NoiseSchedule::new(SchedulerConfig::sd15())?, 20, 1.0)?;
    let ours_ab = Tensor::new(ddim.schedule().alphas_cumprod(), &Device::Cpu)?;
    // ᾱ reproduces diffusers' f32 table exactly.
    assert_eq!(abs_err(&ours_ab, get(&g, "alphas_cumprod")?)?, 0.0);
    let expected_ts: Vec<i64> = get(&g, "inference_timesteps")?.to_vec1()?;
    let ours_ts: Vec<i64> = ddim.timesteps().iter().map(|&t| t as i64).collect();
    assert_eq!(ours_ts, expected_ts);

    let ts: Vec<usize> = get(&g, "timesteps")?
        .to_vec1::<i64>()?
        .iter()
        .map(|&t| t as usize)
        .collect();
    let (sample, eps, noise) = (
        get(&g, "sample")?,
        get(&g, "model_output")?,
        get(&g, "noise")?,
    );
    let (prev, tr) = ddim.step(eps, &ts, sample, Some(noise))?;
    let checks = [
        ("prev_sample", abs_err(&prev, get(&g, "prev_sample")?)?),
        ("mean", abs_err(&tr.mean, get(&g, "mean")?)?),
        ("std", abs_err(&tr.std, get(&g, "std")?)?),
        // Relative: at t = 1 (σ = 0.02) one f32 ulp of μ moves the log-prob by ~5e-6 absolute.
        (
            "log_prob",
            rel_err(&tr.log_prob(&prev)?, get(&g, "log_prob")?)?,
        ),
        (
            "log_prob_shifted",
            rel_err(
                &tr.log_prob(get(&g, "shifted")?)?,
                get(&g, "log_prob_shifted")?,
            )?,
        ),
    ];
    for (name, err) in checks {
        assert!(err <= 1e-5, "{name}: error {err:e}");
    }
    Ok(())
}

#[test]
fn sd_shaped_unet_forward_matches_diffusers() -> TestResult {
    let io = load("unet_sd_io.safetensors")?;
    let model = unet("unet_sd")?;
    let out = model.forward(
        get(&io, "sample")?,
        get(&io, "timesteps")?,
        get(&io, "context")?,
        None,
    )?;
    let err = rel_err(&out, get(&io, "out")?)?;
    assert!(err <= 1e-4, "relative error {err:e}");
    Ok(())
}

#[test]
fn sdxl_shaped_unet_forward_matches_diffusers() -> TestResult {
    let io = load("unet_xl_io.safetensors")?;
    let model = unet("unet_xl")?;
    let added = spo_diffusion::AddedConditioning {
        text_embeds: get(&io, "text_embeds")?.clone(),
        time_ids: get(&io, "time_ids")?.clone(),
    };
    let out = model.forward(
        get(&io, "sample")?,
        get(&io, "timesteps")?,
        get(&io, "context")?,
        Some(&added),
    )?;
    let err = rel_err(&out, get(&io, "out")?)?;
    assert!(err <= 1e-4, "relative error {err:e}");
    Ok(())
}

#[test]
fn peft_lora_file_loads_and_forward_and_gradients_match() -> TestResult {
    let io = load("unet_sd_io.safetensors")?;
    let mut model = unet("unet_sd")?;
    let config = model.load_lora(&fixtures().join("lora_sd.safetensors"))?;
    assert_eq!((config.r, config.lora_alpha), (4, 8.0));
    let (sample, t, ctx) = (
        get(&io, "sample")?,
        get(&io, "timesteps")?,
        get(&io, "context")?,
    );
    let out = model.forward(sample, t, ctx, None)?;
    let err = rel_err(&out, get(&io, "out_lora")?)?;
    assert!(err <= 1e-4, "LoRA forward relative error {err:e}");

    // Disabled adapters give the base model exactly (the SPO reference).
    model.set_lora_enabled(false);
    let base = model.forward(sample, t, ctx, None)?;
    let err = rel_err(&base, get(&io, "out")?)?;
    assert!(err <= 1e-4, "disabled-LoRA relative error {err:e}");
    model.set_lora_enabled(true);

    // Gradients of Σ out·w with respect to every adapter tensor, made trainable.
    let mut trainable = UNet2DConditionModel::clone(&unet("unet_sd")?);
    let lora = load_safetensors(&fixtures().join("lora_sd.safetensors"), &Device::Cpu)?;
    let varmap = candle_nn::VarMap::new();
    for (name, tensor) in model.lora_tensors() {
        varmap
            .data()
            .lock()
            .map_err(|e| e.to_string())?
            .insert(name, candle_core::Var::from_tensor(&tensor)?);
    }
    assert_eq!(varmap.all_vars().len(), lora.len());
    let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    trainable.add_lora(&config, &vb)?;
    let out = trainable.forward(sample, t, ctx, None)?;
    let loss = (out * get(&io, "loss_weights")?)?.sum_all()?;
    let grads = loss.backward()?;
    for (name, var) in spo_nn::named_vars(&varmap)? {
        let ours = grads
            .get(&var)
            .ok_or_else(|| format!("no gradient for {name}"))?;
        let theirs = get(&io, &format!("grad.{name}"))?;
        let err = rel_err(ours, theirs)?;
        assert!(err <= 1e-4, "gradient of {name}: relative error {err:e}");
    }
    Ok(())
}

#[test]
fn vae_encode_and_decode_match_diffusers() -> TestResult {
    let io = load("vae_io.safetensors")?;
    let json = std::fs::read_to_string(fixtures().join("vae.json"))?;
    let config: spo_diffusion::AutoencoderKLConfig = serde_json::from_str(&json)?;
    let vb = checked_var_builder(load("vae.safetensors")?, "vae", DType::F32, &Device::Cpu);
    let vae = spo_diffusion::AutoencoderKL::new(&config, vb)?;
    let dist = vae.encode(get(&io, "image")?)?;
    let decoded = vae.decode(get(&io, "latents")?)?;
    let checks = [
        ("mean", rel_err(&dist.mean, get(&io, "mean")?)?),
        ("std", rel_err(&dist.std, get(&io, "std")?)?),
        ("decoded", rel_err(&decoded, get(&io, "decoded")?)?),
    ];
    for (name, err) in checks {
        assert!(err <= 1e-4, "{name}: relative error {err:e}");
    }
    Ok(())
}

#[test]
fn diffusers_folder_loads_unet_vae_and_scheduler() -> TestResult {
    let root = std::env::temp_dir().join(format!("spo-diffusers-folder-{}", std::process::id()));
    for (component, name) in [("unet", "unet_sd"), ("vae", "vae")] {
        let dir = root.join(component);
        std::fs::create_dir_all(&dir)?;
        std::fs::copy(
            fixtures().join(format!("{name}.json")),
            dir.join("config.json"),
        )?;
        std::fs::copy(
            fixtures().join(format!("{name}.safetensors")),
            dir.join("diffusion_pytorch_model.safetensors"),
        )?;
    }
    std::fs::create_dir_all(root.join("scheduler"))?;
    std::fs::write(
        root.join("scheduler/scheduler_config.json"),
        r#"{"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "beta_start": 0.00085, "num_train_timesteps": 1000, "set_alpha_to_one": false,
            "skip_prk_steps": true, "steps_offset": 1, "clip_sample": false}"#,
    )?;
    std::fs::write(
        root.join("model_index.json"),
        r#"{"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", "PNDMScheduler"]}"#,
    )?;

    let folder = spo_diffusion::DiffusersFolder::open(&root)?;
    assert_eq!(folder.pipeline_class(), Some("StableDiffusionPipeline"));
    assert_eq!(folder.scheduler_config()?, SchedulerConfig::sd15());
    let unet = folder.unet(DType::F32, &Device::Cpu)?;
    let io = load("unet_sd_io.safetensors")?;
    let out = unet.forward(
        get(&io, "sample")?,
        get(&io, "timesteps")?,
        get(&io, "context")?,
        None,
    )?;
    assert!(rel_err(&out, get(&io, "out")?)? <= 1e-4);
    let vae = folder.vae(DType::F32, &Device::Cpu)?;
    let vae_io = load("vae_io.safetensors")?;
    assert!(
        rel_err(
            &vae.decode(get(&vae_io, "latents")?)?,
            get(&vae_io, "decoded")?
        )? <= 1e-4
    );

    // A weight file missing a tensor names it with its expected shape.
    let mut weights = load("unet_sd.safetensors")?;
    weights.remove("conv_out.weight");
    candle_core::safetensors::save(
        &weights,
        root.join("unet/diffusion_pytorch_model.safetensors"),
    )?;
    let err = folder
        .unet(DType::F32, &Device::Cpu)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("`conv_out.weight`") && err.contains("[4, 16, 3, 3]"),
        "{err}"
    );
    std::fs::remove_dir_all(&root)?;
    Ok(())
}

/// `rust_lora/` is written by `examples/write_lora_fixture.rs` (rank 4, α = 2, two AdamW steps)
/// and checked against diffusers' `load_lora_weights` by `make_goldens.py --check-rust-lora`
/// (max relative error 1.3e-6 when written); here it must load back into the same output.
#[test]
fn spo_pipe_lora_file_loads_back_with_its_alpha() -> TestResult {
    let io = load("unet_sd_io.safetensors")?;
    let expected = load("rust_lora/expected.safetensors")?;
    let mut model = unet("unet_sd")?;
    let config = model.load_lora(&fixtures().join("rust_lora/lora.safetensors"))?;
    assert_eq!((config.r, config.lora_alpha), (4, 2.0));
    let out = model.forward(
        get(&io, "sample")?,
        get(&io, "timesteps")?,
        get(&io, "context")?,
        None,
    )?;
    let err = rel_err(&out, get(&expected, "out")?)?;
    assert!(err <= 1e-5, "relative error {err:e}");

    // Merging the adapter into the base weights gives the same function.
    model.merge_lora()?;
    assert!(model.lora_tensors().is_empty());
    let merged = model.forward(
        get(&io, "sample")?,
        get(&io, "timesteps")?,
        get(&io, "context")?,
        None,
    )?;
    let err = rel_err(&merged, get(&expected, "out")?)?;
    assert!(err <= 1e-5, "merged relative error {err:e}");
    Ok(())
}
