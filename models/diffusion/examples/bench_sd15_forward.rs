//! Times one guided UNet call at SD-1.5's real dimensions (`UNet2DConditionConfig::sd15()`:
//! 860M parameters, 64×64 latents, 77 × 768 text states; seeded random weights, f32) on the
//! CPU: the batch of 2 that classifier-free guidance makes of one image, the unit of
//! `sd-sample` and of SPO's rollouts. For comparison with
//! `tests/fixtures/diffusion/bench_sd15_forward.py` (the same model in diffusers/PyTorch).
//! Prints the median and min over the timed calls.
//!
//!     cargo run --release -p spo-diffusion --example bench_sd15_forward -- [calls]
//!
//! Threads follow `RAYON_NUM_THREADS`, as PyTorch's follow `BENCH_THREADS` in the script.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use spo_diffusion::{UNet2DConditionConfig, UNet2DConditionModel};
use spo_nn::{SeededRng, seeded_var_builder};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: first statement of main, before any thread exists.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
    let calls: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(3);
    spo_nn::allocator::retain_freed_memory();
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let config = UNet2DConditionConfig::sd15();
    let built = Instant::now();
    let unet =
        UNet2DConditionModel::new(&config, seeded_var_builder(&varmap, 0, DType::F32, &dev))?;
    let params: usize = varmap.all_vars().iter().map(|v| v.elem_count()).sum();
    eprintln!(
        "{:.0}M parameters, built in {:.1} s",
        params as f64 / 1e6,
        built.elapsed().as_secs_f64()
    );
    let mut rng = SeededRng::new(0);
    let x = rng.normal((2, 4, 64, 64), 0.0, 1.0, DType::F32, &dev)?;
    let context = rng.normal((2, 77, 768), 0.0, 1.0, DType::F32, &dev)?;
    let t = Tensor::new(&[500u32, 500], &dev)?;
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let times = spo_nn::threads::install(threads, || -> spo_diffusion::Result<Vec<f64>> {
        let mut times = Vec::with_capacity(calls);
        for call in 0..=calls {
            let start = Instant::now();
            let out = unet.forward(&x, &t, &context, None)?;
            out.sum_all()?.to_scalar::<f32>()?;
            if call > 0 {
                times.push(start.elapsed().as_secs_f64());
            }
        }
        Ok(times)
    })??;
    eprintln!(
        "each call, s: {:?}",
        times
            .iter()
            .map(|t| (t * 100.0).round() / 100.0)
            .collect::<Vec<_>>()
    );
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "spo-diffusion sd15 guided forward (batch 2, 64x64, {threads} threads): median {:.2} s, min {:.2} s over {} calls",
        sorted[sorted.len() / 2],
        sorted[0],
        sorted.len()
    );
    Ok(())
}
