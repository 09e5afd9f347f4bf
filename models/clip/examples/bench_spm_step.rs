//! Times one training step of the in-world step-aware preference model (the default
//! `train-spm` shape: both towers 64 wide, 2 layers, 4 heads, 32×32 images in 8×8 patches,
//! 16 pairs): both towers forward at per-image timesteps, the two-way cross-entropy of each
//! pair, backward, AdamW over every weight. The frozen base model's x̂₀ that feeds it in the
//! stage is left out: this is the SPM's own step. Compare with
//! `models/clip/bench/spm_step.py`, the same model in transformers/PyTorch.
//!
//!     cargo run --release -p spo-clip --example bench_spm_step -- [pairs] [steps]
//!
//! Threads follow `RAYON_NUM_THREADS` (PyTorch's `BENCH_THREADS`); candle's elementwise ops stay
//! on the calling thread and glibc keeps freed buffers, as in spo-pipe.

use std::time::Instant;

use candle_core::{D, DType, Device, Tensor};
use candle_nn::VarMap;
use spo_clip::{ClipConfig, ClipTextConfig, ClipVisionConfig, Spm, SpmVariant};
use spo_nn::{Activation, AdamW, AdamWConfig, SeededRng, named_vars, seeded_var_builder};

const VOCAB: usize = 128;
const CONTEXT: usize = 16;

fn config() -> ClipConfig {
    ClipConfig {
        text_config: ClipTextConfig {
            vocab_size: VOCAB,
            hidden_size: 64,
            intermediate_size: 256,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            max_position_embeddings: CONTEXT,
            hidden_act: Activation::Gelu,
            layer_norm_eps: 1e-5,
            eos_token_id: VOCAB as u32 - 1,
        },
        vision_config: ClipVisionConfig {
            hidden_size: 64,
            intermediate_size: 256,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_channels: 3,
            image_size: 32,
            patch_size: 8,
            hidden_act: Activation::Gelu,
            layer_norm_eps: 1e-5,
        },
        projection_dim: 64,
        logit_scale_init_value: (1.0f64 / 0.07).ln(),
    }
}

mod common;
use common::median;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY: first statement of main, before any thread exists.
    let threads = unsafe { common::as_spo_pipe() };
    let mut args = std::env::args().skip(1);
    let pairs: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(16);
    let steps: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(20);
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let spm = Spm::new(
        &config(),
        SpmVariant::TimeConditioned,
        seeded_var_builder(&varmap, 0, DType::F32, &dev),
    )?;
    let params: usize = named_vars(&varmap)?
        .iter()
        .map(|(_, v)| v.elem_count())
        .sum();
    let mut opt = AdamW::new(named_vars(&varmap)?, AdamWConfig::default())?;
    let mut rng = SeededRng::new(1);
    let n = 2 * pairs;
    // The whole loop on a pool of `threads` threads, as `train-spm` runs its steps
    // (spo_nn::threads), so that kernels parallelise in place rather than hand off per op.
    let times = spo_nn::threads::install(threads, || -> candle_core::Result<Vec<[f64; 4]>> {
        let mut times = Vec::new();
        for step in 0..=steps {
            let pixels = rng.normal((n, 3, 32, 32), 0.0, 1.0, DType::F32, &dev)?;
            // start, 10 words, end, padding
            let words = rng.indices(n * 10, VOCAB - 3);
            let ids: Vec<u32> = (0..n)
                .flat_map(|i| {
                    let body = words[i * 10..(i + 1) * 10].iter().map(|&w| w as u32 + 1);
                    std::iter::once(VOCAB as u32 - 2)
                        .chain(body)
                        .chain([VOCAB as u32 - 1])
                        .chain(std::iter::repeat_n(0, CONTEXT - 12))
                })
                .collect();
            let ids = Tensor::from_vec(ids, (n, CONTEXT), &dev)?;
            let ts: Vec<f32> = rng.indices(n, 1000).iter().map(|&t| t as f32).collect();
            let start = Instant::now();
            let logits = spm.logits(&pixels, &ids, &ts)?;
            // two-way cross-entropy, image 0 of each pair preferred
            let both = Tensor::stack(
                &[logits.narrow(0, 0, pairs)?, logits.narrow(0, pairs, pairs)?],
                1,
            )?;
            let loss = candle_nn::ops::log_softmax(&both, D::Minus1)?
                .narrow(1, 0, 1)?
                .mean_all()?
                .neg()?;
            loss.to_scalar::<f32>()?;
            let forward = start.elapsed().as_secs_f64();
            let grads = loss.backward()?;
            let backward = start.elapsed().as_secs_f64() - forward;
            opt.step(&grads)?;
            let total = start.elapsed().as_secs_f64();
            if step > 0 {
                times.push([total, forward, backward, total - forward - backward]);
            }
        }
        Ok(times)
    })??;
    let part = |i: usize| 1e3 * median(times.iter().map(|t| t[i]).collect());
    let low = 1e3 * times.iter().map(|t| t[0]).fold(f64::INFINITY, f64::min);
    println!(
        "spo-clip SPM train step: params {params}, {pairs} pairs of 32x32 images, threads {threads}: median {:.2} ms (forward {:.2}, backward {:.2}, optimizer {:.2}), min {low:.2} ms over {steps} steps",
        part(0),
        part(1),
        part(2),
        part(3)
    );
    Ok(())
}
