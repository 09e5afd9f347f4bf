//! Gradient checkpointing of the UNet: the forward on a tape gives the same ε̂ as the plain
//! forward, and the tape's recomputed backward gives the LoRA the gradients candle's graph
//! gives it (SD-1.5's layout and SDXL's added conditioning, with guidance); an untracked
//! forward through trainable adapters gives the same values and records no graph.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use spo_diffusion::{
    AddedConditioning, GuidanceInputs, LoraConfig, UNet2DConditionConfig, UNet2DConditionModel,
    guided_prediction, guided_prediction_with,
};
use spo_nn::checkpoint::Tape;
use spo_nn::{SeededRng, named_vars, seeded_var_builder};

type TestResult = Result<(), Box<dyn std::error::Error>>;
/// A UNet and its adapters' variables by name.
type WithLora = (UNet2DConditionModel, Vec<(String, Var)>);

/// SD-1.5's tiny layout, or with SDXL's `text_time` conditioning (pooled width 8, ids of 4).
fn config(sdxl: bool) -> UNet2DConditionConfig {
    let mut cfg = UNet2DConditionConfig::tiny();
    if sdxl {
        cfg.addition_embed_type = Some("text_time".into());
        cfg.addition_time_embed_dim = Some(4);
        cfg.projection_class_embeddings_input_dim = Some(8 + 6 * 4);
    }
    cfg
}

/// A tiny UNet with frozen weights in `dtype` (plain tensors, as a checkpoint loads them) and a
/// trainable rank-2 LoRA whose B matrices are drawn too (PEFT's zeros would leave every A
/// without a gradient).
fn unet_with_lora(sdxl: bool, dtype: DType) -> Result<WithLora, Box<dyn std::error::Error>> {
    let dev = Device::Cpu;
    let base = VarMap::new();
    UNet2DConditionModel::new(&config(sdxl), seeded_var_builder(&base, 0, dtype, &dev))?;
    let frozen: HashMap<String, Tensor> = named_vars(&base)?
        .into_iter()
        .map(|(name, var)| (name, var.as_tensor().detach()))
        .collect();
    let vb = VarBuilder::from_tensors(frozen, dtype, &dev);
    let mut unet = UNet2DConditionModel::new(&config(sdxl), vb)?;
    let lora = VarMap::new();
    unet.add_lora(
        &LoraConfig::spo(2),
        &seeded_var_builder(&lora, 1, DType::F32, &dev),
    )?;
    let vars = named_vars(&lora)?;
    let mut rng = SeededRng::new(2);
    for (name, var) in &vars {
        if name.ends_with("lora_B.weight") {
            var.set(&rng.normal(var.shape(), 0.0, 0.1, DType::F32, &dev)?)?;
        }
    }
    Ok((unet, vars))
}

fn max_abs(t: &Tensor) -> Result<f32, candle_core::Error> {
    t.to_dtype(DType::F32)?.abs()?.max_all()?.to_scalar::<f32>()
}

fn checkpointed_gradients_equal_the_graph_s(sdxl: bool) -> TestResult {
    let dev = Device::Cpu;
    let (unet, vars) = unet_with_lora(sdxl, DType::F32)?;
    let mut rng = SeededRng::new(3);
    let b = 2;
    let xt = rng.normal((b, 4, 16, 16), 0.0, 1.0, DType::F32, &dev)?;
    let ts = [751, 51];
    let cond = rng.normal((b, 3, 32), 0.0, 1.0, DType::F32, &dev)?;
    let uncond = rng.normal((b, 3, 32), 0.0, 1.0, DType::F32, &dev)?;
    let target = rng.normal((b, 4, 16, 16), 0.0, 1.0, DType::F32, &dev)?;
    let added = |seed: u64| -> Result<AddedConditioning, candle_core::Error> {
        let mut rng = SeededRng::new(seed);
        Ok(AddedConditioning {
            text_embeds: rng.normal((b, 8), 0.0, 1.0, DType::F32, &dev)?,
            time_ids: Tensor::new(&[[64f32, 64., 0., 0., 64., 64.]; 2], &dev)?,
        })
    };
    let (added_cond, added_uncond) = (added(4)?, added(5)?);
    let inputs = GuidanceInputs {
        cond: &cond,
        uncond: &uncond,
        added_cond: sdxl.then_some(&added_cond),
        added_uncond: sdxl.then_some(&added_uncond),
        scale: 5.0,
    };
    let loss_of = |eps: &Tensor| (eps - &target)?.sqr()?.sum_all();

    let eps = guided_prediction(&unet, &xt, &ts, &inputs)?;
    let direct = loss_of(&eps)?.backward()?;

    let mut tape = Tape::new();
    let taped_eps = guided_prediction_with(&unet, &mut tape, &xt, &ts, &inputs)?;
    assert_eq!(max_abs(&(&taped_eps - &eps)?)?, 0.0, "the same forward");
    assert!(
        !taped_eps.track_op(),
        "no graph outlives the tape's forward"
    );
    let seed = Var::from_tensor(&taped_eps)?;
    let g = loss_of(seed.as_tensor())?.backward()?;
    let g = g.get(seed.as_tensor()).ok_or("the loss reads ε̂")?.clone();
    let params: Vec<&Tensor> = vars.iter().map(|(_, v)| v.as_tensor()).collect();
    let taped = tape.backward(&[(taped_eps, g)], &params)?;

    assert_eq!(vars.len(), 4 * 2 * 4 * 2);
    for (name, var) in &vars {
        let a = direct
            .get(var)
            .ok_or(format!("{name}: no gradient from the graph"))?;
        let t = taped
            .get(var)
            .ok_or(format!("{name}: no gradient from the tape"))?;
        let (diff, scale) = (max_abs(&(a - t)?)?, max_abs(a)?);
        assert!(scale > 0.0, "{name}: a zero gradient tests nothing");
        assert!(diff <= 1e-5 * scale, "{name}: {diff} against {scale}");
    }
    Ok(())
}

#[test]
fn the_sd15_layout_s_checkpointed_gradients_equal_the_graph_s() -> TestResult {
    checkpointed_gradients_equal_the_graph_s(false)
}

#[test]
fn the_sdxl_layout_s_checkpointed_gradients_equal_the_graph_s() -> TestResult {
    checkpointed_gradients_equal_the_graph_s(true)
}

#[test]
fn an_untracked_forward_gives_the_same_values_and_keeps_no_graph() -> TestResult {
    let dev = Device::Cpu;
    // f16 weights take the op-by-op path CUDA takes; f32 the fused CPU kernels
    for dtype in [DType::F32, DType::F16] {
        let (unet, _) = unet_with_lora(false, dtype)?;
        let mut rng = SeededRng::new(6);
        let xt = rng.normal((1, 4, 16, 16), 0.0, 1.0, dtype, &dev)?;
        let t = Tensor::new(&[500u32], &dev)?;
        let context = rng.normal((1, 3, 32), 0.0, 1.0, dtype, &dev)?;
        let tracked = unet.forward(&xt, &t, &context, None)?;
        assert!(tracked.track_op());
        unet.set_lora_tracked(false);
        let untracked = unet.forward(&xt, &t, &context, None);
        unet.set_lora_tracked(true);
        let untracked = untracked?;
        assert_eq!(max_abs(&(&tracked - &untracked)?)?, 0.0, "{dtype:?}");
        assert!(!untracked.track_op(), "{dtype:?}");
    }
    Ok(())
}
