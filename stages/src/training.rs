//! What every training stage shares: resumable checkpoints in the cell's scratch directory,
//! a loss log written as Parquet and as a PNG curve, and a progress bar with loss and rate.
//!
//! A checkpoint (see [`crate::checkpoint`]) is the model's variables, the optimizer's moments
//! (spo-nn's AdamW, whose state is saveable), the RNG state, the step, the loss log and the
//! stage's own state, written as one atomic unit every `every` steps; a stage killed
//! mid-training resumes from its last checkpoint and stores the same bytes as an uninterrupted
//! run.

use std::sync::Arc;

use arrow_array::{Float64Array, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use candle_nn::VarMap;
use image::{Rgb, RgbImage};
use indicatif::ProgressBar;
use serde::Serialize;
use serde::de::DeserializeOwned;
use spo_core::{StageContext, StageError};
use spo_nn::{AdamW, SeededRng};

use crate::checkpoint::{self, State};
use crate::error::Result;
use crate::world_parquet::{col, write_table};

/// Resumable training state; `E` is the stage's own state, checkpointed with the rest.
pub struct Trainer<E = ()> {
    dir: std::path::PathBuf,
    every: usize,
    pub step: usize,
    pub rng: SeededRng,
    /// (step, loss) so far, resumed with the checkpoint.
    pub losses: Vec<(u64, f64)>,
    /// The stage's own state (e.g. a per-round log), resumed with the checkpoint.
    pub extra: E,
    pb: ProgressBar,
}

impl<E: Serialize + DeserializeOwned + Default + Clone> Trainer<E> {
    /// Starts, or resumes from `cx`'s scratch directory, a run of `steps` steps. On resume the
    /// variables of `varmap` and the moments of `opt` are restored.
    pub fn start(
        cx: &StageContext,
        name: &str,
        steps: usize,
        every: usize,
        seed: u64,
        varmap: &mut VarMap,
        opt: &mut AdamW,
    ) -> Result<Trainer<E>> {
        let dir = cx.scratch_dir().join(name);
        std::fs::create_dir_all(&dir).map_err(|e| StageError::io(&dir, e))?;
        let pb = cx.progress(steps as u64, name);
        let mut t = Trainer {
            dir: dir.clone(),
            every: every.max(1),
            step: 0,
            rng: SeededRng::new(seed),
            losses: Vec::new(),
            extra: E::default(),
            pb,
        };
        if let Some(s) = checkpoint::load::<E>(&dir, varmap, opt)? {
            t.step = s.step;
            t.rng = SeededRng::from_state(s.rng);
            t.losses = s.losses();
            t.extra = s.extra;
            tracing::info!("{}: resuming {name} at step {}", cx.stage(), t.step);
        }
        t.pb.set_position(t.step as u64);
        Ok(t)
    }

    /// Records the loss of the step just taken (failing on a non-finite loss) and checkpoints
    /// when due.
    pub fn record(&mut self, loss: f64, varmap: &VarMap, opt: &AdamW) -> Result<()> {
        if !loss.is_finite() {
            return Err(StageError::Failed(format!(
                "loss is {loss} at step {}; nothing was stored (lower the learning rate?)",
                self.step
            ))
            .into());
        }
        self.step += 1;
        self.losses.push((self.step as u64, loss));
        self.pb.set_position(self.step as u64);
        self.pb.set_message(format!("loss {loss:.4}"));
        if self.step.is_multiple_of(self.every) {
            let state = State::new(
                self.step,
                self.rng.state(),
                &self.losses,
                self.extra.clone(),
            );
            checkpoint::save(&self.dir, state, varmap, opt)?;
        }
        Ok(())
    }

    /// Writes `<name>_loss.parquet` and `<name>_loss.png` into the output and closes the bar.
    pub fn finish(self, cx: &mut StageContext, name: &str) -> Result<()> {
        self.pb.finish_and_clear();
        let schema = Arc::new(Schema::new(vec![
            Field::new("step", DataType::UInt64, false),
            Field::new("loss", DataType::Float64, false),
        ]));
        let steps: Vec<u64> = self.losses.iter().map(|l| l.0).collect();
        let losses: Vec<f64> = self.losses.iter().map(|l| l.1).collect();
        write_table(
            cx,
            &format!("{name}_loss.parquet"),
            schema,
            vec![
                col(UInt64Array::from(steps)),
                col(Float64Array::from(losses.clone())),
            ],
        )?;
        let png = crate::tensors::png_bytes(&plot(&losses))?;
        cx.write_artifact(&format!("{name}_loss.png"), &png)?;
        if let Some(last) = losses.iter().rev().take(20).copied().reduce(|a, b| a + b) {
            cx.metric(
                &format!("{name}_final_loss"),
                last / losses.len().min(20) as f64,
            );
        }
        Ok(())
    }
}

/// The learning-rate multiplier at `step` of `total`: linear warm-up over `warmup` steps, then a
/// half cosine from 1 to 0 at `total`. A function of the step alone, so a resumed run follows
/// the same schedule.
pub fn warmup_cosine(step: usize, total: usize, warmup: usize) -> f64 {
    if step < warmup {
        return (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let f = ((step - warmup) as f64 / span).min(1.0);
    0.5 * (1.0 + (std::f64::consts::PI * f).cos())
}

/// A 480×240 line plot of `ys` (raw in light blue, a running mean in dark blue), axes in grey.
pub fn plot(ys: &[f64]) -> RgbImage {
    let (w, h, m) = (480u32, 240u32, 12u32);
    let mut im = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    for x in m..w - m {
        im.put_pixel(x, h - m, Rgb([160, 160, 160]));
    }
    for y in m..h - m {
        im.put_pixel(m, y, Rgb([160, 160, 160]));
    }
    if ys.len() < 2 {
        return im;
    }
    let (lo, hi) = ys
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &y| {
            (a.min(y), b.max(y))
        });
    let span = if hi > lo { hi - lo } else { 1.0 };
    let to_px = |i: usize, y: f64| -> (f64, f64) {
        let x = m as f64 + (w - 2 * m) as f64 * i as f64 / (ys.len() - 1) as f64;
        (x, (h - m) as f64 - (h - 2 * m) as f64 * (y - lo) / span)
    };
    let window = (ys.len() / 20).max(1);
    let smooth: Vec<f64> = (0..ys.len())
        .map(|i| {
            let s = i.saturating_sub(window - 1);
            ys[s..=i].iter().sum::<f64>() / (i - s + 1) as f64
        })
        .collect();
    for (series, colour) in [
        (ys, Rgb([170, 200, 240])),
        (&smooth[..], Rgb([20, 60, 160])),
    ] {
        for i in 1..series.len() {
            let (a, b) = (to_px(i - 1, series[i - 1]), to_px(i, series[i]));
            let n = ((b.0 - a.0).abs().max((b.1 - a.1).abs()).ceil() as usize).max(1);
            for k in 0..=n {
                let f = k as f64 / n as f64;
                let (x, y) = (a.0 + (b.0 - a.0) * f, a.1 + (b.1 - a.1) * f);
                if x >= 0.0 && y >= 0.0 && (x as u32) < w && (y as u32) < h {
                    im.put_pixel(x as u32, y as u32, colour);
                }
            }
        }
    }
    im
}

#[cfg(test)]
mod tests {
    use super::warmup_cosine;

    #[test]
    fn warmup_then_cosine_to_zero() {
        assert!((warmup_cosine(0, 100, 10) - 0.1).abs() < 1e-12);
        assert!((warmup_cosine(9, 100, 10) - 1.0).abs() < 1e-12);
        assert!((warmup_cosine(10, 100, 10) - 1.0).abs() < 1e-12);
        assert!(
            (warmup_cosine(55, 100, 10) - 0.5).abs() < 1e-12,
            "half-way down at the middle"
        );
        assert!(warmup_cosine(99, 100, 10) < 1e-3);
        assert!(
            (warmup_cosine(0, 100, 0) - 1.0).abs() < 1e-12,
            "no warm-up starts at the peak"
        );
        let lrs: Vec<f64> = (10..100).map(|s| warmup_cosine(s, 100, 10)).collect();
        assert!(
            lrs.windows(2).all(|w| w[1] <= w[0]),
            "monotone after the warm-up"
        );
    }
}
