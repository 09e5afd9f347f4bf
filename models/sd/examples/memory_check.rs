//! Checks `spo_sd::memory`'s activation model against what a UNet of SD-1.5's widths actually
//! holds on the CPU, in half precision (the op-by-op path CUDA runs; the fused f32 CPU kernels
//! hold less): peak resident memory minus the resident memory after the weights are built,
//! beside the estimate for the same shape. Smaller latents than SD-1.5's 64×64 keep it quick.
//!
//!     cargo run --release -p spo-sd --example memory_check -- sample|train|checkpointed SIDE BATCH
//!
//! `sample`: one guided call (the batch doubled) without gradients; `train`: the same with a
//! rank-4 LoRA and the gradient of a squared-error loss taken; `checkpointed`: that gradient
//! through the UNet run on a tape (`spo_nn::checkpoint`), its forward untracked.

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;

use candle_nn::{VarBuilder, VarMap};
use spo_diffusion::{LoraConfig, UNet2DConditionConfig, UNet2DConditionModel};
use spo_nn::checkpoint::Tape;
use spo_nn::{SeededRng, seeded_var_builder};
use spo_sd::memory::{Pass, human_bytes, unet_activations};

/// A `/proc/self/status` field, in bytes.
fn status_bytes(field: &str) -> Result<u64, Box<dyn std::error::Error>> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .ok_or("no such field")?;
    let kib: u64 = line.split_whitespace().nth(1).ok_or("empty")?.parse()?;
    Ok(kib << 10)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, side, batch] = args.as_slice() else {
        return Err("usage: memory_check sample|train|checkpointed SIDE BATCH".into());
    };
    let pass = match mode.as_str() {
        "sample" => Pass::NoGrad,
        "train" => Pass::Graph,
        "checkpointed" => Pass::Checkpointed,
        _ => return Err(format!("`{mode}`: sample, train or checkpointed").into()),
    };
    let train = pass != Pass::NoGrad;
    let (side, batch): (usize, usize) = (side.parse()?, batch.parse()?);
    let dev = Device::Cpu;
    let dtype = DType::F16;
    let mut config = UNet2DConditionConfig::sd15();
    config.sample_size = Some(side);
    // seeded random weights, then frozen as plain tensors, as a pipeline's are loaded
    let seeded = VarMap::new();
    UNet2DConditionModel::new(&config, seeded_var_builder(&seeded, 0, dtype, &dev))?;
    let frozen: HashMap<String, Tensor> = seeded
        .data()
        .lock()
        .map_err(|_| "poisoned")?
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect();
    drop(seeded);
    let mut unet =
        UNet2DConditionModel::new(&config, VarBuilder::from_tensors(frozen, dtype, &dev))?;
    let lora = VarMap::new();
    if train {
        unet.add_lora(
            &LoraConfig::spo(4),
            &seeded_var_builder(&lora, 1, DType::F32, &dev),
        )?;
    }
    let mut rng = SeededRng::new(0);
    let b = 2 * batch;
    let x = rng.normal((b, 4, side, side), 0.0, 1.0, dtype, &dev)?;
    let context = rng.normal((b, 77, 768), 0.0, 1.0, dtype, &dev)?;
    let t = Tensor::new(vec![500u32; b].as_slice(), &dev)?;
    let before = status_bytes("VmRSS:")?;
    let lora_tensors: Vec<Tensor> = unet.lora_tensors().into_iter().map(|(_, t)| t).collect();
    let grads = match pass {
        Pass::Checkpointed => {
            let mut tape = Tape::new();
            unet.set_lora_tracked(false);
            let out = unet.forward_with(&mut tape, &x, &t, &context, None)?;
            unet.set_lora_tracked(true);
            // d/dε of mean(ε²)
            let g = (out.to_dtype(DType::F32)? * (2.0 / out.elem_count() as f64))?;
            Some(tape.backward(&[(out, g)], &lora_tensors.iter().collect::<Vec<_>>())?)
        }
        Pass::Graph | Pass::NoGrad => {
            let eps = unet.forward(&x, &t, &context, None)?;
            let loss = eps.to_dtype(DType::F32)?.sqr()?.mean_all()?;
            if pass == Pass::Graph {
                Some(loss.backward()?)
            } else {
                loss.to_scalar::<f32>()?;
                None
            }
        }
    };
    if let Some(grads) = grads {
        let n = lora
            .all_vars()
            .iter()
            .filter(|v| grads.get(v).is_some())
            .count();
        eprintln!("{n} LoRA tensors got gradients");
    }
    let measured = status_bytes("VmHWM:")?.saturating_sub(before);
    let estimate = unet_activations(&config, [side, side], batch, dtype, pass)?;
    println!(
        "{mode} {side}x{side} batch {batch} (guided: {b}), f16: measured {} above the weights, estimated {} (ratio {:.2})",
        human_bytes(measured),
        human_bytes(estimate),
        estimate as f64 / measured.max(1) as f64
    );
    Ok(())
}
