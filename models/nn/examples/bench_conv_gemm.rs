//! GFLOP/s of the GEMMs and 3×3 convolutions inside the tiny UNet's training step, on one
//! thread: spo-nn's GEMM helper and fused convolution against candle's `matmul` and `conv2d`,
//! for comparison with `tests/fixtures/diffusion/bench_conv_gemm.py` (PyTorch, same shapes).
//! Prints the best of five timed rounds per row.
//!
//!     cargo run --release -p spo-nn --example bench_conv_gemm

use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor, Var};
use spo_nn::SeededRng;
use spo_nn::gemm::{View, gemm};
use spo_nn::im2col::conv2d_im2col;

/// Best seconds per call of `f` over five rounds of `reps` calls.
fn best(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut best = f64::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        for _ in 0..reps {
            f()?;
        }
        best = best.min(start.elapsed().as_secs_f64() / reps as f64);
    }
    Ok(best)
}

fn report(what: &str, flops: f64, seconds: f64) {
    println!(
        "{what:<58} {:>8.1} us {:>7.1} GFLOP/s",
        seconds * 1e6,
        flops / seconds / 1e9
    );
}

fn main() -> Result<()> {
    let dev = Device::Cpu;
    let mut rng = SeededRng::new(0);
    spo_nn::threads::install(1, || -> Result<()> {
        // (m, k, n): one image's conv GEMM at 32 and 64 channels, and a square reference
        for (m, k, n) in [(32, 288, 256), (64, 576, 64), (512, 512, 512)] {
            let a = rng.normal((m, k), 0.0, 1.0, DType::F32, &dev)?;
            let b = rng.normal((k, n), 0.0, 1.0, DType::F32, &dev)?;
            let (av, bv) = (
                a.flatten_all()?.to_vec1::<f32>()?,
                b.flatten_all()?.to_vec1::<f32>()?,
            );
            let mut c = vec![0f32; m * n];
            let flops = 2.0 * (m * k * n) as f64;
            let reps = (2e8 / flops).ceil() as usize;
            let t = best(reps, || {
                let d = View::rows(0, m, n, n);
                gemm(
                    (&mut c, d),
                    (&av, View::rows(0, m, k, k)),
                    (&bv, View::rows(0, k, n, n)),
                    1.0,
                    false,
                );
                Ok(())
            })?;
            report(&format!("gemm {m}x{k} · {k}x{n} (spo_nn::gemm)"), flops, t);
            let t = best(reps, || a.matmul(&b).map(drop))?;
            report(&format!("gemm {m}x{k} · {k}x{n} (candle matmul)"), flops, t);
        }
        // (batch, channels, size): the tiny UNet's 3×3 convs at its two resolutions
        for (b, c, s) in [(16, 32, 16), (16, 64, 8)] {
            let x = Var::from_tensor(&rng.normal((b, c, s, s), 0.0, 1.0, DType::F32, &dev)?)?;
            let w = Var::from_tensor(&rng.normal((c, c, 3, 3), 0.0, 0.1, DType::F32, &dev)?)?;
            let bias = Var::from_tensor(&rng.normal(c, 0.0, 0.1, DType::F32, &dev)?)?;
            let flops = 2.0 * (b * c * c * 9 * s * s) as f64;
            let reps = (2e8 / flops).ceil() as usize;
            let shape = format!("conv3x3 {b}x{c}x{s}x{s} -> {c}");
            let fused = || conv2d_im2col(&x, &w, &bias, 1, 1);
            let plain = || {
                x.conv2d(&w, 1, 1, 1, 1)?
                    .broadcast_add(&bias.reshape((1, c, 1, 1))?)
            };
            report(
                &format!("{shape} forward (spo-nn)"),
                flops,
                best(reps, || fused().map(drop))?,
            );
            report(
                &format!("{shape} forward (candle conv2d)"),
                flops,
                best(reps, || plain().map(drop))?,
            );
            // forward + backward to input, weight and bias: three times the forward's work
            let step = |y: Tensor| y.sum_all()?.backward().map(drop);
            report(
                &format!("{shape} fwd+bwd (spo-nn)"),
                3.0 * flops,
                best(reps, || step(fused()?))?,
            );
            report(
                &format!("{shape} fwd+bwd (candle conv2d)"),
                3.0 * flops,
                best(reps.div_ceil(4), || step(plain()?))?,
            );
        }
        Ok(())
    })?
}
