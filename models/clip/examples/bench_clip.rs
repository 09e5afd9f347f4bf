//! Throughput of a ViT-B/32-size CLIP (random weights) on the CPU: images/s of the image tower
//! and of the whole PickScore-style scoring path (Pillow-exact preprocessing of 512×512 images,
//! both towers, f64 cosine). The numbers go into BENCHMARKS.md ("CLIP and scorers"), next to
//! `models/clip/bench/open_clip_bench.py` run in the same sitting.
//!
//!     cargo run --release -p spo-clip --example bench_clip -- [batch] [repeats]
//!
//! Threads follow `RAYON_NUM_THREADS`; candle's elementwise ops stay on the calling thread
//! (`CANDLE_NUM_THREADS=1` unless set) and glibc keeps freed buffers, as in spo-pipe.

use std::time::Instant;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use image::RgbImage;
use spo_clip::preprocess::Preprocess;
use spo_clip::{ClipConfig, ClipModel, ClipTokenizer, Metric, ScoreOptions, Scorer, TextCleaning};
use spo_nn::{SeededRng, seeded_var_builder};

mod common;
use common::median;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY: first statement of main, before any thread exists.
    let threads = unsafe { common::as_spo_pipe() };
    let mut args = std::env::args().skip(1);
    let batch: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(16);
    let repeats: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(5);
    let dev = Device::Cpu;
    let cfg = ClipConfig::vit_b_32();
    let varmap = VarMap::new();
    // Seeded random weights, then rebuilt from plain tensors (not Vars) so the inference path
    // is the one scoring loaded checkpoints takes.
    ClipModel::new(&cfg, seeded_var_builder(&varmap, 0, DType::F32, &dev))?;
    let tensors: std::collections::HashMap<_, _> = spo_nn::named_vars(&varmap)?
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().detach()))
        .collect();
    let model = ClipModel::new(&cfg, VarBuilder::from_tensors(tensors, DType::F32, &dev))?;
    // Everything timed on a pool of `threads` threads, as the stages score (spo_nn::threads), so
    // that kernels parallelise in place rather than hand off per op.
    spo_nn::threads::install(threads, || timed(model, batch, repeats, &dev))?
        .map_err(|e| e as Box<dyn std::error::Error>)
}

/// Times the tower, preprocessing, the text tower and the whole scoring path; prints medians.
fn timed(
    model: ClipModel,
    batch: usize,
    repeats: usize,
    dev: &Device,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut rng = SeededRng::new(1);
    let pixels = rng.normal((batch, 3, 224, 224), 0.0, 1.0, DType::F32, dev)?;
    model.get_image_features(&pixels)?; // warm-up
    let mut tower = Vec::new();
    for _ in 0..repeats {
        let t = Instant::now();
        model.get_image_features(&pixels)?.to_vec2::<f32>()?;
        tower.push(batch as f64 / t.elapsed().as_secs_f64());
    }
    let images: Vec<RgbImage> = (0..batch)
        .map(|i| {
            RgbImage::from_fn(512, 512, |x, y| {
                image::Rgb([(x + i as u32) as u8, y as u8, (x ^ y) as u8])
            })
        })
        .collect();
    let prompts = vec!["a photo of an astronaut riding a horse on the moon"; batch];
    let refs: Vec<&RgbImage> = images.iter().collect();
    let mut pre = Vec::new();
    for _ in 0..repeats {
        let t = Instant::now();
        Preprocess::HF_CLIP.batch(&refs, dev)?;
        pre.push(batch as f64 / t.elapsed().as_secs_f64());
    }
    let tokenizer = ClipTokenizer::new(TextCleaning::Hf)?;
    let ids = tokenizer.encode_batch(&prompts, dev)?;
    let mut text = Vec::new();
    for _ in 0..repeats {
        let t = Instant::now();
        model.get_text_features(&ids)?.to_vec2::<f32>()?;
        text.push(batch as f64 / t.elapsed().as_secs_f64());
    }
    let options = ScoreOptions {
        batch_size: batch,
        ..ScoreOptions::default()
    };
    let scorer = Scorer::from_clip(Metric::PickScore, model, &options, dev)?;
    scorer.score(&images, &prompts)?;
    let mut whole = Vec::new();
    for _ in 0..repeats {
        let t = Instant::now();
        scorer.score(&images, &prompts)?;
        whole.push(batch as f64 / t.elapsed().as_secs_f64());
    }
    println!(
        "spo-clip ViT-B/32 random weights, batch {batch}, {repeats} repeats (median): image tower {:.1} images/s; text tower {:.1} prompts/s; preprocess 512x512 -> 224 {:.1} images/s; score from 512x512 RGB (preprocess + both towers) {:.1} images/s",
        median(tower),
        median(text),
        median(pre),
        median(whole)
    );
    Ok(())
}
