//! Training paths on a tiny UNet: every trainable variable receives a gradient, and one SPO-style
//! LoRA step (policy vs LoRA-disabled reference, DDIM log-probabilities, AdamW) moves only the
//! adapters.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use spo_diffusion::{
    Ddim, GuidanceInputs, LoraConfig, NoiseSchedule, SchedulerConfig, UNet2DConditionConfig,
    UNet2DConditionModel, guided_prediction,
};
use spo_methods::ratio::ClampedRatio;
use spo_nn::{
    AdamW, AdamWConfig, SeededRng, named_vars, seeded_var_builder, vars_without_gradient,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn tiny_unet(varmap: &VarMap) -> Result<UNet2DConditionModel, Box<dyn std::error::Error>> {
    let vb = seeded_var_builder(varmap, 0, DType::F32, &Device::Cpu);
    Ok(UNet2DConditionModel::new(
        &UNet2DConditionConfig::tiny(),
        vb,
    )?)
}

#[test]
fn every_unet_weight_gets_a_gradient_from_the_denoising_loss() -> TestResult {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let unet = tiny_unet(&varmap)?;
    let mut rng = SeededRng::new(1);
    let schedule = NoiseSchedule::new(SchedulerConfig::sd15())?;
    let x0 = rng.normal((2, 4, 8, 8), 0.0, 1.0, DType::F32, &dev)?;
    let noise = rng.normal((2, 4, 8, 8), 0.0, 1.0, DType::F32, &dev)?;
    let t = Tensor::new(&[17u32, 640], &dev)?;
    let context = rng.normal((2, 3, 32), 0.0, 1.0, DType::F32, &dev)?;
    let xt = schedule.add_noise(&x0, &noise, &t)?;
    let loss = (unet.forward(&xt, &t, &context, None)? - &noise)?
        .sqr()?
        .mean_all()?;
    let vars = named_vars(&varmap)?;
    assert!(vars.len() > 100, "{} vars", vars.len());
    assert_eq!(
        vars_without_gradient(&vars, &loss.backward()?)?,
        Vec::<String>::new()
    );
    Ok(())
}

/// One SPO update (spo-reference §2.7) with CFG 5 in the training forward.
fn spo_loss(
    unet: &UNet2DConditionModel,
    ddim: &Ddim,
    batch: &(Tensor, Vec<usize>, Tensor, Tensor, Tensor, Tensor),
) -> Result<Tensor, Box<dyn std::error::Error>> {
    let (xt, t, cond, uncond, x_win, x_lose) = batch;
    let inputs = GuidanceInputs {
        cond,
        uncond,
        added_cond: None,
        added_uncond: None,
        scale: 5.0,
    };
    let (beta, eps) = (10.0, 0.1);
    // policy: adapters on; reference: the same model with adapters off
    unet.set_lora_enabled(true);
    let policy = ddim.transition(&guided_prediction(unet, xt, t, &inputs)?, t, xt)?;
    unet.set_lora_enabled(false);
    let reference = ddim.transition(&guided_prediction(unet, xt, t, &inputs)?.detach(), t, xt)?;
    unet.set_lora_enabled(true);
    // SPO's loss, as the spo stage computes it: winners' transitions first, then the losers'
    let logp = Tensor::cat(&[policy.log_prob(x_win)?, policy.log_prob(x_lose)?], 0)?;
    let logp_ref = Tensor::cat(
        &[reference.log_prob(x_win)?, reference.log_prob(x_lose)?],
        0,
    )?;
    let loss = ClampedRatio {
        beta,
        clip_eps: eps,
    };
    Ok(loss.ordered_pairs(&logp, &logp_ref)?.loss)
}

#[test]
fn spo_lora_step_trains_only_the_adapters_and_every_adapter_learns() -> TestResult {
    let dev = Device::Cpu;
    let base_map = VarMap::new();
    let mut unet = tiny_unet(&base_map)?;
    let base_before = named_vars(&base_map)?
        .into_iter()
        .map(|(n, v)| Ok((n, v.as_tensor().copy()?)))
        .collect::<Result<Vec<_>, candle_core::Error>>()?;
    let lora_map = VarMap::new();
    let config = LoraConfig::spo(4);
    unet.add_lora(&config, &seeded_var_builder(&lora_map, 2, DType::F32, &dev))?;
    let lora_vars = named_vars(&lora_map)?;
    // transformers: 1 in the down block, 1 in the mid block, 2 in the up block; each has 2
    // attention layers with 4 projections, each with A and B
    assert_eq!(lora_vars.len(), 4 * 2 * 4 * 2);
    let mut opt = AdamW::new(
        lora_vars.clone(),
        AdamWConfig {
            lr: 1e-3,
            weight_decay: 1e-4,
            ..AdamWConfig::default()
        },
    )?;

    let ddim = Ddim::new(NoiseSchedule::new(SchedulerConfig::sd15())?, 20, 1.0)?;
    let mut rng = SeededRng::new(3);
    let xt = rng.normal((2, 4, 8, 8), 0.0, 1.0, DType::F32, &dev)?;
    let t = vec![751, 51];
    let cond = rng.normal((2, 3, 32), 0.0, 1.0, DType::F32, &dev)?;
    let uncond = rng.normal((2, 3, 32), 0.0, 1.0, DType::F32, &dev)?;
    // two candidates from the same x_t (shared mean, independent noise)
    let inputs = GuidanceInputs {
        cond: &cond,
        uncond: &uncond,
        added_cond: None,
        added_uncond: None,
        scale: 5.0,
    };
    let tr = ddim.transition(&guided_prediction(&unet, &xt, &t, &inputs)?, &t, &xt)?;
    let x_win = tr.sample(&rng.normal((2, 4, 8, 8), 0.0, 1.0, DType::F32, &dev)?)?;
    let x_lose = tr.sample(&rng.normal((2, 4, 8, 8), 0.0, 1.0, DType::F32, &dev)?)?;
    let batch = (xt, t, cond, uncond, x_win, x_lose);

    // Step 1: policy = reference, loss = ln 2. B = 0 (PEFT init), so only the B matrices get a
    // gradient; every A is reported.
    let loss = spo_loss(&unet, &ddim, &batch)?;
    assert!((loss.to_scalar::<f32>()? - std::f32::consts::LN_2).abs() < 1e-6);
    let grads = loss.backward()?;
    let missing = vars_without_gradient(&lora_vars, &grads)?;
    assert_eq!(missing.len(), lora_vars.len() / 2);
    assert!(
        missing.iter().all(|n| n.ends_with("lora_A.weight")),
        "{missing:?}"
    );
    opt.step(&grads)?;

    // Step 2: with B ≠ 0 every adapter tensor learns.
    let grads = spo_loss(&unet, &ddim, &batch)?.backward()?;
    assert_eq!(
        vars_without_gradient(&lora_vars, &grads)?,
        Vec::<String>::new()
    );
    opt.step(&grads)?;

    // The base weights never moved.
    for (name, before) in base_before {
        let now = base_map.data().lock().map_err(|e| e.to_string())?[&name]
            .as_tensor()
            .copy()?;
        let diff = (now - before)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0, "{name} changed");
    }
    Ok(())
}
