//! `curve`: a training method's learning curve and what it cost — the paper's efficiency claim
//! ("SPO converges much faster than Diffusion-DPO", §5), measured.
//!
//! The method's cell keeps LoRA snapshots at evenly spaced steps (its `snapshots` param, see
//! [`crate::training::Trainer::keep_snapshots`]) and the CPU seconds its training had used at
//! each. A `curve` cell samples the validation prompts from the base model (step 0) and from
//! every snapshot exactly as `sample` does (same prompts, seeds and sampler, so the last point
//! with `sample`'s params is the method's Table 2 row) and scores them as `score` does; it writes
//! `curve.parquet` (`step`, `images` and every mean score per point). Its metrics:
//!
//! | metric | what it is |
//! |---|---|
//! | `cpu_seconds` | CPU seconds of the method's training (its cell's threads, across resumes) |
//! | `judge_cpu_seconds` | CPU seconds of training a judge the method alone needs (inputs of kind `train-spm`: SPO's SPM, as the paper counts SPM's GPU hours in SPO's cost) |
//! | `total_cpu_seconds` | the two together |
//! | `score_base`, `score_final`, `score_gain` | the `metric` param's score at step 0, at the end, and their difference |
//! | `midpoint` | half-way from the base model to the reference's final score (the reference: an input of kind `curve`, SPO's in the default pipeline; the curve itself without one); absent where the reference did not improve on the base model (no half-way to reach) |
//! | `cpu_to_midpoint` | CPU seconds (judge included) at which the curve first reaches the midpoint, interpolated between points; absent where it never does or there is none |
//! | `reached_midpoint` | 1 if it does, else 0 |
//!
//! CPU seconds are measurements, so they live in the cell's metrics only; every file is
//! byte-reproducible.

use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, Int64Array};
use arrow_schema::{DataType, Field, Schema};
use indicatif::ProgressBar;
use spo_core::{Input, ParamSpec, StageContext, StageError, StageKind};
use spo_world::Scene;

use crate::device::device;
use crate::error::{At, Result};
use crate::inworld::{InWorldClip, load_unet, on_cores};
use crate::sample::{SampleParams, draw, jobs};
use crate::score::{InWorldScorers, means};
use crate::training::SNAPSHOTS;
use crate::world_parquet::{col, f64_at, i64_at, str_at, write_table};
use crate::worlddata::{WorldData, each_row};

/// The file a `curve` cell writes (and reads from its reference).
pub const CURVE: &str = "curve.parquet";

spo_core::param_choice! {
    /// The `metric` param: the score the midpoint is measured on.
    pub enum CurveMetric {
        PickScore = "pickscore",
        Aesthetic = "aesthetic",
        ClipScore = "clipscore",
        Detail = "detail",
        Grain = "grain",
        Alignment = "alignment",
    }
}

impl CurveMetric {
    /// Whether a lower score is the better one (the grain measure).
    fn lower_is_better(self) -> bool {
        self == CurveMetric::Grain
    }
}

spo_core::stage_params! {
    /// The params of `curve` besides `sample`'s.
    pub struct CurveParams {
        /// the score the midpoint between the base model and the reference is measured on
        /// (aesthetics: what the paper claims SPO improves, and faster than Diffusion-DPO)
        metric: CurveMetric = choice_of(CurveMetric::Aesthetic),
    }
}

/// The `curve` stage kind.
pub struct Curve;

impl StageKind for Curve {
    fn name(&self) -> &'static str {
        "curve"
    }
    fn version(&self) -> u32 {
        // 2: `judge_cpu_seconds` is +0, not −0, for a method without a judge.
        2
    }
    fn summary(&self) -> &'static str {
        "A method's learning curve from its LoRA snapshots, and its CPU cost to reach half-way from the base model to SPO (needs world, clip-pretrain, base-pretrain, pickscore-train, aesthetic-train, a method with snapshots; optional train-spm, curve)"
    }
    fn params(&self) -> Vec<ParamSpec> {
        let mut p = SampleParams::specs();
        p.extend(CurveParams::specs());
        p
    }
    fn seeded(&self) -> bool {
        true
    }
    fn run(&self, cx: &mut StageContext) -> Result<(), StageError> {
        Ok(run(cx)?)
    }
}

/// One point of a curve: the training step (0: the base model) and its mean scores.
struct Point {
    step: u64,
    means: Vec<(&'static str, f64)>,
}

impl Point {
    fn get(&self, metric: CurveMetric) -> f64 {
        self.means
            .iter()
            .find(|(n, _)| *n == metric.as_str())
            .map_or(f64::NAN, |m| m.1)
    }
}

/// Computes one cell of this kind.
fn run(cx: &mut StageContext) -> Result<()> {
    let sp = SampleParams::from_params(cx.params())?;
    let cp = CurveParams::from_params(cx.params())?;
    let dev = device();
    let method = method_input(cx)?.clone();
    let snapshots = read_snapshots(&method)?;
    let train_cpu = metric_of(&method, "cpu_seconds")?;
    let snapshot_cpu: Vec<f64> = snapshots
        .iter()
        .map(|(step, _)| metric_of(&method, &format!("cpu_seconds_at_{step}")))
        .collect::<Result<_>>()?;
    // a fold from +0 (a sum of no floats is −0, which the tables would print as such)
    let judge_cpu = cx
        .inputs()
        .iter()
        .filter(|i| i.kind == "train-spm")
        .try_fold(0.0, |sum, i| {
            Ok::<_, crate::error::Error>(sum + metric_of(i, "cpu_seconds")?)
        })?;
    let reference = match cx.optional_input_of_kind("curve")? {
        Some(r) => Some(read_ends(r, cp.metric)?),
        None => None,
    };

    let world = WorldData::load(cx.input_of_kind("world")?)?;
    let clip = InWorldClip::load(cx.input_of_kind("clip-pretrain")?, &dev)?;
    let base = cx.input_of_kind("base-pretrain")?.clone();
    let scorers = InWorldScorers::load(
        cx.input_of_kind("world")?,
        cx.input_of_kind("pickscore-train")?,
        cx.input_of_kind("aesthetic-train")?,
        &dev,
    )?;
    let jobs = jobs(cx.seed().unwrap_or(0), &world, &sp);
    let texts: Vec<&str> = jobs
        .iter()
        .map(|(i, _)| world.validation[*i].text.as_str())
        .collect();
    let scenes: Vec<Scene> = jobs
        .iter()
        .map(|(i, _)| world.validation[*i].scene)
        .collect();
    let loras = std::iter::once((0, None)).chain(snapshots.iter().map(|(s, p)| (*s, Some(p))));
    let pb = cx.progress((jobs.len() * (snapshots.len() + 1)) as u64, "curve");
    let mut points = Vec::with_capacity(snapshots.len() + 1);
    for (step, lora) in loras {
        let mut unet = load_unet(&base, &dev)?;
        if let Some(path) = lora {
            unet.load_lora(path).at(path)?;
        }
        let images = draw(&unet, &clip, &world, &sp, &jobs, cx.threads(), &pb)?;
        let scores = on_cores(cx.threads(), || {
            scorers.score_all(&images, &texts, &scenes, &ProgressBar::hidden())
        })?;
        points.push(Point {
            step,
            means: means(&scores),
        });
    }
    pb.finish_and_clear();
    write_curve(cx, &points, jobs.len())?;

    let metric = cp.metric;
    let (first, last) = match (points.first(), points.last()) {
        (Some(f), Some(l)) => (f.get(metric), l.get(metric)),
        _ => unreachable_points()?,
    };
    let (ref_base, ref_final) = reference.unwrap_or((first, last));
    let midpoint = midpoint(metric, ref_base, ref_final);
    // the cost axis: the judge is trained before the method's first step
    let costs: Vec<(f64, f64)> = std::iter::once(judge_cpu)
        .chain(snapshot_cpu.iter().map(|c| judge_cpu + c))
        .zip(points.iter().map(|p| p.get(metric)))
        .collect();
    cx.metric("cpu_seconds", train_cpu);
    cx.metric("judge_cpu_seconds", judge_cpu);
    cx.metric("total_cpu_seconds", train_cpu + judge_cpu);
    cx.metric("score_base", first);
    cx.metric("score_final", last);
    cx.metric("score_gain", last - first);
    if let Some(m) = midpoint {
        cx.metric("midpoint", m);
    }
    match midpoint.and_then(|m| first_reaching(&costs, ref_base, m)) {
        Some(cpu) => {
            cx.metric("cpu_to_midpoint", cpu);
            cx.metric("reached_midpoint", 1.0);
        }
        None => cx.metric("reached_midpoint", 0.0),
    }
    Ok(())
}

/// A curve always has the base model's point; this is the error if it somehow has none.
fn unreachable_points<T>() -> Result<T> {
    Err(StageError::Failed("a curve without points".into()).into())
}

/// The one input that kept snapshots (the method whose curve this is).
fn method_input(cx: &StageContext) -> Result<&Input> {
    let mut it = cx
        .inputs()
        .iter()
        .filter(|i| i.manifest.files.iter().any(|f| f.path == SNAPSHOTS));
    match (it.next(), it.next()) {
        (Some(m), None) => Ok(m),
        (Some(a), Some(b)) => Err(StageError::Failed(format!(
            "stage `{}`: both `{}` and `{}` kept snapshots; a curve follows one method",
            cx.stage(),
            a.stage,
            b.stage
        ))
        .into()),
        (None, _) => Err(StageError::Failed(format!(
            "stage `{}`: none of its inputs kept snapshots; it needs a method stage (spo, \
             gradspo, diffusion-dpo, mapo, d3po, ddpo) with `snapshots` > 0",
            cx.stage()
        ))
        .into()),
    }
}

/// The method's snapshots: (step, path), in step order.
fn read_snapshots(method: &Input) -> Result<Vec<(u64, PathBuf)>> {
    let list = method.file(SNAPSHOTS)?;
    let mut out = Vec::new();
    each_row(&list, &["step", "file"], |c, i| {
        let bad = || {
            StageError::Failed(format!(
                "{}: row {i}: `step` or `file` is null or of the wrong type",
                list.display()
            ))
        };
        let step = i64_at(c[0], i).ok_or_else(bad)?;
        let file = str_at(c[1], i).ok_or_else(bad)?;
        let step = u64::try_from(step).map_err(|_| bad())?;
        out.push((step, method.file(&format!("snapshots/{file}"))?));
        Ok(())
    })?;
    if !out.windows(2).all(|w| w[0].0 < w[1].0) || out.is_empty() {
        return Err(StageError::Failed(format!(
            "{}: the snapshots are not listed in increasing step order (or none is)",
            list.display()
        ))
        .into());
    }
    Ok(out)
}

/// A metric the input's cell must have recorded.
fn metric_of(input: &Input, name: &str) -> Result<f64> {
    input.metric(name).ok_or_else(|| {
        StageError::Input {
            need: input.stage.clone(),
            message: format!("recorded no `{name}` (computed by an older spo-pipe?)"),
        }
        .into()
    })
}

/// A reference curve's first and last value of `metric`.
fn read_ends(reference: &Input, metric: CurveMetric) -> Result<(f64, f64)> {
    let path = reference.file(CURVE)?;
    let mut values = Vec::new();
    each_row(&path, &[metric.as_str()], |c, i| {
        values.push(f64_at(c[0], i).ok_or_else(|| {
            StageError::Failed(format!(
                "{}: row {i}: `{metric}` is null or not a float",
                path.display()
            ))
        })?);
        Ok(())
    })?;
    match (values.first(), values.last()) {
        (Some(&a), Some(&b)) => Ok((a, b)),
        _ => Err(StageError::Failed(format!("{}: no points", path.display())).into()),
    }
}

/// Half-way from `base` to `reference` on `metric`, where the reference improved on the base
/// model (there is no half-way to reach where it did not).
fn midpoint(metric: CurveMetric, base: f64, reference: f64) -> Option<f64> {
    let improved = if metric.lower_is_better() {
        reference < base
    } else {
        reference > base
    };
    improved.then_some((base + reference) / 2.0)
}

/// The cost at which a curve of (cost, score) points first reaches `target` coming from
/// `from` (upwards if the target is above it, downwards if below), interpolated linearly
/// between the two points around the crossing. `None` if it never does, or if the target is
/// `from` itself (no gap to close).
pub fn first_reaching(points: &[(f64, f64)], from: f64, target: f64) -> Option<f64> {
    let up = target > from;
    if target == from || !target.is_finite() {
        return None;
    }
    let reached = |s: f64| if up { s >= target } else { s <= target };
    let mut prev: Option<(f64, f64)> = None;
    for &(cost, score) in points {
        if reached(score) {
            return Some(match prev {
                Some((c0, s0)) if s0 != score => c0 + (cost - c0) * (target - s0) / (score - s0),
                _ => cost,
            });
        }
        prev = Some((cost, score));
    }
    None
}

/// Writes `curve.parquet`: per point its step, the number of images and every mean score.
fn write_curve(cx: &mut StageContext, points: &[Point], images: usize) -> Result<()> {
    let names: Vec<&'static str> = points
        .first()
        .map(|p| p.means.iter().map(|m| m.0).collect())
        .unwrap_or_default();
    let mut fields = vec![
        Field::new("step", DataType::Int64, false),
        Field::new("images", DataType::Int64, false),
    ];
    fields.extend(
        names
            .iter()
            .map(|n| Field::new(*n, DataType::Float64, false)),
    );
    let mut cols: Vec<ArrayRef> = vec![
        col(Int64Array::from(
            points.iter().map(|p| p.step as i64).collect::<Vec<_>>(),
        )),
        col(Int64Array::from(vec![images as i64; points.len()])),
    ];
    for (k, _) in names.iter().enumerate() {
        cols.push(col(Float64Array::from(
            points.iter().map(|p| p.means[k].1).collect::<Vec<_>>(),
        )));
    }
    write_table(cx, CURVE, Arc::new(Schema::new(fields)), cols)
}

#[cfg(test)]
mod tests {
    use super::{CurveMetric, first_reaching, midpoint};

    #[test]
    fn a_midpoint_exists_only_where_the_reference_improved_on_the_base_model() {
        assert_eq!(midpoint(CurveMetric::Aesthetic, 0.80, 0.82), Some(0.81));
        assert_eq!(midpoint(CurveMetric::Aesthetic, 0.80, 0.79), None);
        assert_eq!(midpoint(CurveMetric::Aesthetic, 0.80, 0.80), None);
        // lower grain is better
        assert_eq!(midpoint(CurveMetric::Grain, 0.04, 0.02), Some(0.03));
        assert_eq!(midpoint(CurveMetric::Grain, 0.02, 0.04), None);
    }

    #[test]
    fn the_midpoint_is_interpolated_between_the_points_around_it() {
        let up = [(0.0, 1.0), (10.0, 1.2), (20.0, 2.0), (30.0, 1.5)];
        // 1.5 lies 3/8 of the way from 1.2 (at 10 s) to 2.0 (at 20 s)
        assert_eq!(first_reaching(&up, 1.0, 1.5), Some(13.75));
        // reached exactly at a point
        assert_eq!(first_reaching(&up, 1.0, 1.2), Some(10.0));
        // never reached
        assert_eq!(first_reaching(&up, 1.0, 2.5), None);
        // downwards (a lower-is-better score, or a reference that lost): the first point at or
        // below the target
        let down = [(5.0, 1.0), (15.0, 0.75), (25.0, 0.25)];
        assert_eq!(first_reaching(&down, 1.0, 0.5), Some(20.0));
        // a curve that starts beyond the target reaches it at its first point
        assert_eq!(first_reaching(&down, 1.2, 1.1), Some(5.0));
        // no gap to close, or no number to reach
        assert_eq!(first_reaching(&up, 1.0, 1.0), None);
        assert_eq!(first_reaching(&up, 1.0, f64::NAN), None);
    }
}
