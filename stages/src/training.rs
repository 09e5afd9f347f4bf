//! What every training stage shares: resumable checkpoints in the cell's scratch directory,
//! a loss log written as Parquet and as a PNG curve, and a progress bar with loss and rate.
//!
//! A checkpoint (see [`crate::checkpoint`]) is the model's variables, the optimizer's moments
//! (spo-nn's AdamW, whose state is saveable), the RNG state, the step, the loss log and the
//! stage's own state, written as one atomic unit every `every` steps; a stage killed
//! mid-training resumes from its last checkpoint and stores the same bytes as an uninterrupted
//! run.
//!
//! A trainer also measures what the training costs (CPU seconds of the cell's threads, carried
//! across resumes; the `cpu_seconds` metric) and, when asked, keeps snapshots of the model at
//! evenly spaced steps, so that a learning curve can be drawn from one run (the `curve` kind).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{Float64Array, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use candle_nn::VarMap;
use image::{Rgb, RgbImage};
use indicatif::ProgressBar;
use serde::Serialize;
use serde::de::DeserializeOwned;
use spo_core::{StageContext, StageError};
use spo_nn::threads::CpuClock;
use spo_nn::{AdamW, SeededRng};

use crate::checkpoint::{self, Cost, ExactF64, State};
use crate::error::Result;
use crate::world_parquet::{col, write_table};

/// The file listing a training cell's snapshots (`step`, `file`), beside `snapshots/`.
pub const SNAPSHOTS: &str = "snapshots.parquet";

/// Resumable training state; `E` is the stage's own state, checkpointed with the rest.
pub struct Trainer<'a, E = ()> {
    dir: PathBuf,
    every: usize,
    total: usize,
    pub step: usize,
    pub rng: SeededRng,
    /// (step, loss) so far, resumed with the checkpoint.
    pub losses: Vec<(u64, f64)>,
    /// The stage's own state (e.g. a per-round log), resumed with the checkpoint.
    pub extra: E,
    pb: ProgressBar,
    /// The CPU clock of the cell's threads and its reading when this process started training.
    clock: CpuClock,
    clock_at_start: f64,
    /// The cost up to the checkpoint this process resumed from, then the snapshots taken.
    cost: Cost,
    snapshots: Option<Snapshots<'a>>,
}

/// Writes the model being trained to a file (a snapshot).
type SaveModel<'a> = Box<dyn Fn(&Path) -> Result<()> + 'a>;

/// Which steps to snapshot and how to write the model at one.
struct Snapshots<'a> {
    steps: Vec<usize>,
    save: SaveModel<'a>,
}

impl<'a, E: Serialize + DeserializeOwned + Default + Clone> Trainer<'a, E> {
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
    ) -> Result<Trainer<'a, E>> {
        let dir = cx.scratch_dir().join(name);
        std::fs::create_dir_all(&dir).map_err(|e| StageError::io(&dir, e))?;
        let pb = cx.progress(steps as u64, name);
        let clock = CpuClock::new()?;
        let clock_at_start = clock.seconds();
        let mut t = Trainer {
            dir: dir.clone(),
            every: every.max(1),
            total: steps,
            step: 0,
            rng: SeededRng::new(seed),
            losses: Vec::new(),
            extra: E::default(),
            pb,
            clock,
            clock_at_start,
            cost: Cost::default(),
            snapshots: None,
        };
        if let Some(s) = checkpoint::load::<E>(&dir, varmap, opt)? {
            t.step = s.step;
            t.rng = SeededRng::from_state(s.rng);
            t.losses = s.losses();
            t.extra = s.extra;
            t.cost = s.cost;
            tracing::info!("{}: resuming {name} at step {}", cx.stage(), t.step);
        }
        t.pb.set_position(t.step as u64);
        Ok(t)
    }

    /// Keeps `count` snapshots of the model, at evenly spaced steps ending with the last, each
    /// written by `save` (into the cell's scratch directory, so that they survive a kill; the
    /// output gets them at [`Trainer::finish`]). Call before the first step.
    pub fn keep_snapshots(&mut self, count: usize, save: impl Fn(&Path) -> Result<()> + 'a) {
        let steps = snapshot_steps(self.total, count);
        self.snapshots = (!steps.is_empty()).then(|| Snapshots {
            steps,
            save: Box::new(save),
        });
    }

    /// CPU seconds the training has used so far, across resumes.
    pub fn cpu_seconds(&self) -> f64 {
        self.cost.cpu_seconds.0 + self.clock.seconds() - self.clock_at_start
    }

    /// Writes the snapshot of the step just taken if it is one of the kept steps (atomically:
    /// a kill leaves the previous state) and notes its cost.
    fn snapshot(&mut self) -> Result<()> {
        let Some(snaps) = &self.snapshots else {
            return Ok(());
        };
        if !snaps.steps.contains(&self.step) {
            return Ok(());
        }
        let dir = self.snapshot_dir();
        let path = dir.join(snapshot_name(self.step));
        std::fs::create_dir_all(&dir).map_err(|e| StageError::io(&dir, e))?;
        let partial = dir.join(".partial");
        (snaps.save)(&partial)?;
        std::fs::rename(&partial, &path).map_err(|e| StageError::io(&path, e))?;
        let step = self.step as u64;
        let cpu = ExactF64(self.cpu_seconds());
        self.cost.snapshots.retain(|(s, _)| *s < step);
        self.cost.snapshots.push((step, cpu));
        Ok(())
    }

    /// Records the loss of the step just taken (failing on a non-finite loss), takes a snapshot
    /// and checkpoints when due.
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
        self.snapshot()?;
        if self.step.is_multiple_of(self.every) {
            let mut state = State::new(
                self.step,
                self.rng.state(),
                &self.losses,
                self.extra.clone(),
            );
            state.cost = Cost {
                cpu_seconds: ExactF64(self.cpu_seconds()),
                snapshots: self.cost.snapshots.clone(),
            };
            checkpoint::save(&self.dir, state, varmap, opt)?;
        }
        Ok(())
    }

    /// Writes `<name>_loss.parquet` and `<name>_loss.png` into the output (and the snapshots,
    /// listed in [`SNAPSHOTS`]), records the `cpu_seconds` metric (and `cpu_seconds_at_<step>`
    /// per snapshot) and closes the bar.
    pub fn finish(self, cx: &mut StageContext, name: &str) -> Result<()> {
        self.pb.finish_and_clear();
        cx.metric("cpu_seconds", self.cpu_seconds());
        if self.snapshots.is_some() {
            self.write_snapshots(cx)?;
        }
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

impl<E> Trainer<'_, E> {
    /// The scratch directory of the snapshots.
    fn snapshot_dir(&self) -> PathBuf {
        self.dir.join("snapshots")
    }

    /// Moves the snapshots into the output as `snapshots/<file>` with their list, and records
    /// each one's cost as a metric.
    fn write_snapshots(&self, cx: &mut StageContext) -> Result<()> {
        let mut files = Vec::with_capacity(self.cost.snapshots.len());
        for &(step, cpu) in &self.cost.snapshots {
            let name = snapshot_name(step as usize);
            let path = self.snapshot_dir().join(&name);
            let bytes = std::fs::read(&path).map_err(|e| StageError::io(&path, e))?;
            cx.write_artifact(&format!("snapshots/{name}"), &bytes)?;
            cx.metric(&format!("cpu_seconds_at_{step}"), cpu.0);
            files.push(name);
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new("step", DataType::Int64, false),
            Field::new("file", DataType::Utf8, false),
        ]));
        let steps: Vec<i64> = self.cost.snapshots.iter().map(|s| s.0 as i64).collect();
        write_table(
            cx,
            SNAPSHOTS,
            schema,
            vec![
                col(arrow_array::Int64Array::from(steps)),
                col(arrow_array::StringArray::from(files)),
            ],
        )
    }
}

/// `count` evenly spaced steps of `total`, the last one last (fewer when `total` is smaller).
fn snapshot_steps(total: usize, count: usize) -> Vec<usize> {
    let mut steps: Vec<usize> = (1..=count)
        .map(|i| (total * i).div_ceil(count))
        .filter(|&s| s > 0)
        .collect();
    steps.dedup();
    steps
}

/// The file name of the snapshot at `step`.
fn snapshot_name(step: usize) -> String {
    format!("lora-{step:06}.safetensors")
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
    use super::{snapshot_steps, warmup_cosine};

    #[test]
    fn snapshots_are_evenly_spaced_and_end_at_the_last_step() {
        assert_eq!(snapshot_steps(16, 4), [4, 8, 12, 16]);
        assert_eq!(snapshot_steps(6, 4), [2, 3, 5, 6]);
        assert_eq!(snapshot_steps(1, 4), [1]);
        assert_eq!(snapshot_steps(400, 1), [400]);
        assert!(snapshot_steps(16, 0).is_empty());
        assert!(snapshot_steps(0, 4).is_empty());
    }

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
