//! Times one full training step (forward, backward, AdamW over every weight) of the tiny
//! SD-shaped UNet (`UNet2DConditionConfig::tiny()`: 32/64 channels, one cross-attention down
//! and up block) on the CPU, for comparison with `tests/fixtures/diffusion/bench_unet_step.py`
//! (the same model in diffusers/PyTorch). Prints the median and min over the timed steps.
//!
//!     cargo run --release -p spo-diffusion --example bench_unet_step -- [batch] [size] [steps] [--system-malloc] [--candle-ops]
//!
//! `--candle-ops` turns spo-nn's fused CPU kernels off (`spo_nn::fast_path`), timing the same
//! model on candle's own ops.
//!
//! Thread count follows `RAYON_NUM_THREADS` (the pool the step runs on) as PyTorch's follows
//! `BENCH_THREADS` in the script; with the fused kernels candle's elementwise ops stay on the
//! calling thread (`CANDLE_NUM_THREADS=1` unless set), as in spo-pipe.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use spo_diffusion::{NoiseSchedule, SchedulerConfig, UNet2DConditionConfig, UNet2DConditionModel};
use spo_nn::{AdamW, AdamWConfig, SeededRng, named_vars, seeded_var_builder};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fused = !std::env::args().any(|a| a == "--candle-ops");
    // As in spo-pipe's main: spo-nn's kernels parallelise on their own pool, and candle's
    // barrier pool (its elementwise ops, CANDLE_NUM_THREADS − 1 workers) would spin on the same
    // cores after every op — a quarter of a two-thread step here. candle's own ops keep it.
    if fused && std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: first statement of main, before any thread exists.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let (batch, size, steps) = (
        args.first().copied().unwrap_or(16),
        args.get(1).copied().unwrap_or(16),
        args.get(2).copied().unwrap_or(10),
    );
    // `--system-malloc` keeps glibc's default thresholds (fresh mmap per large buffer).
    let tuned = !std::env::args().any(|a| a == "--system-malloc")
        && spo_nn::allocator::retain_freed_memory();
    spo_nn::fast_path::set_enabled(fused);
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let config = UNet2DConditionConfig::tiny();
    let unet =
        UNet2DConditionModel::new(&config, seeded_var_builder(&varmap, 0, DType::F32, &dev))?;
    let params: usize = named_vars(&varmap)?
        .iter()
        .map(|(_, v)| v.elem_count())
        .sum();
    let mut opt = AdamW::new(named_vars(&varmap)?, AdamWConfig::default())?;
    let schedule = NoiseSchedule::new(SchedulerConfig::sd15())?;
    let mut rng = SeededRng::new(0);
    let x0 = rng.normal((batch, 4, size, size), 0.0, 1.0, DType::F32, &dev)?;
    let context = rng.normal(
        (batch, 8, config.cross_attention_dim),
        0.0,
        1.0,
        DType::F32,
        &dev,
    )?;
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // The whole loop on a pool of `threads` threads, as a stage's training step runs
    // (spo_nn::threads), so that kernels parallelise in place rather than hand off per op.
    let times = spo_nn::threads::install(threads, || -> spo_diffusion::Result<Vec<[f64; 4]>> {
        let mut times = Vec::with_capacity(steps);
        for step in 0..=steps {
            let noise = rng.normal((batch, 4, size, size), 0.0, 1.0, DType::F32, &dev)?;
            let t: Vec<u32> = rng
                .indices(batch, 1000)
                .into_iter()
                .map(|t| t as u32)
                .collect();
            let t = Tensor::new(t.as_slice(), &dev)?;
            let start = Instant::now();
            let xt = schedule.add_noise(&x0, &noise, &t)?;
            let loss = (unet.forward(&xt, &t, &context, None)? - &noise)?
                .sqr()?
                .mean_all()?;
            let forward = start.elapsed().as_secs_f64();
            let grads = loss.backward()?;
            let backward = start.elapsed().as_secs_f64();
            opt.step(&grads)?;
            let total = start.elapsed().as_secs_f64();
            if step > 0 {
                times.push([total, forward, backward - forward, total - backward]);
            }
        }
        Ok(times)
    })??;
    let median = |i: usize| {
        let mut v: Vec<f64> = times.iter().map(|t| t[i]).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        (1e3 * v[v.len() / 2], 1e3 * v[0])
    };
    let ((total, min), (fwd, _), (bwd, _), (opt, _)) = (median(0), median(1), median(2), median(3));
    let ops = if fused { "spo-nn fused" } else { "candle" };
    println!(
        "candle tiny UNet train step ({ops} ops): params {params}, batch {batch}, latent 4x{size}x{size}, \
         retained malloc {tuned}, threads {threads}: median {total:.1} ms (forward {fwd:.1}, \
         backward {bwd:.1}, optimizer {opt:.1}), min {min:.1} ms over {steps} steps"
    );
    Ok(())
}
