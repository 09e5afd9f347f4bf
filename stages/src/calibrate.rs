//! `calibrate`: whether the world carries the signal SPO needs, as one table of checks.
//!
//! - **Base**: prompt alignment of the base model's samples, their graded detail (mean and
//!   spread), and how well the detail metric separates clean renders of the same prompts from
//!   those samples (AUC).
//! - **Judges**, on held-out *detail-only* pairs: two renders of one validation scene (never
//!   trained on), each clean or carrying a random flaw, the truth being the oracle's graded
//!   detail (pairs closer than [`MIN_GAP`] are skipped). The PickScore analogue judges the
//!   images themselves (overall and per kind of flaw of the worse image); at noisy timesteps the
//!   SPM and the PickScore analogue both judge the base model's x₀-prediction from one shared
//!   noise, as SPO uses them; the graded oracle on the same x₀-predictions says how much of the
//!   detail gap they still carry (a judge of x₀-predictions can hardly do better).
//! - **Pools** (with the SPM): within SPO's own pools, how often each judge's best candidate
//!   leads to a final image with more graded detail than its worst (`crate::pool_check`).
//! - **SPO**: the valid-pair rate, the pairs kept and how far the clamped ratios moved.
//!
//! Each group runs when its inputs are among the stage's needs (a `score` cell for the base,
//! `pickscore-train` and `train-spm` for the judges, `spo` for SPO), so the judges, which do not
//! depend on the seed or on SPO, can be one cell that a sweep over SPO does not repeat. Each check
//! is a metric of the cell (so `spo-pipe tables` shows them) and a row of `checks.parquet` with
//! the bar it is held to.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::{BooleanArray, Float64Array, StringArray};
use arrow_schema::{DataType, Field, Schema};
use candle_core::{DType, Device, Tensor};
use image::RgbImage;
use spo_core::{Input, ParamSpec, StageContext, StageError, StageKind};
use spo_diffusion::{Ddim, NoiseSchedule, SchedulerConfig, UNet2DConditionModel};
use spo_nn::SeededRng;
use spo_world::{FlawKind, QualityMix, high_pass_distance, quality_from_high_pass, render};

use crate::clip_train::WorldClip;
use crate::device::device;
use crate::error::Result;
use crate::inworld::{InWorldClip, load_unet, on_cores};
use crate::pool_check::{PoolAccuracy, pool_accuracies};
use crate::score::pickscores;
use crate::tensors::{images_to_tensor, tensor_to_images};
use crate::world_parquet::{col, f64_at, write_table};
use crate::worlddata::{WorldData, each_row};

/// Pairs whose graded detail differs by less than this are too close to call.
pub const MIN_GAP: f64 = 0.05;

/// The timestep bins the SPM is judged in.
const T_BINS: [(usize, usize); 3] = [(0, 250), (250, 500), (500, 750)];

/// A check: its group, name, value and the bar it must meet (`None`: reported only).
struct Check {
    group: &'static str,
    name: String,
    value: f64,
    bar: Option<Bar>,
}

#[derive(Clone, Copy)]
enum Bar {
    AtLeast(f64),
    Within(f64, f64),
}

impl Bar {
    fn met(self, v: f64) -> bool {
        match self {
            Bar::AtLeast(lo) => v >= lo,
            Bar::Within(lo, hi) => (lo..=hi).contains(&v),
        }
    }
    fn text(self) -> String {
        match self {
            Bar::AtLeast(lo) => format!(">= {lo}"),
            Bar::Within(lo, hi) => format!("[{lo}, {hi}]"),
        }
    }
}

spo_core::stage_params! {
    /// The params of `calibrate`.
    pub struct CalibrateParams {
        /// detail-only pairs drawn from the validation scenes
        pairs: usize = int(384).range(8.0, 1e6),
        /// share of the pairs' images left clean (the rest carry one random flaw)
        clean_share: f64 = float(0.2).range(0.0, 1.0),
        /// guidance of the base model's x0-prediction, as train-spm uses it
        cfg: f64 = float(5.0).range(1.0, 100.0),
        /// validation prompts of the pool check (one pool each at t = 751, 551, 351; 0: none)
        pool_prompts: usize = int(48).range(0.0, 1e5),
        /// seed of the pairs, timesteps and noise
        seed: u64 = int(0).min(0.0),
    }
}

/// The `calibrate` stage kind.
pub struct Calibrate;

impl StageKind for Calibrate {
    fn name(&self) -> &'static str {
        "calibrate"
    }
    fn version(&self) -> u32 {
        // 4: the pool check (the judges' picks within SPO's pools).
        // 3: the world's coarser flaws and three-band graded oracle.
        // 2: groups by the inputs present; the graded oracle on the x0-predictions.
        4
    }
    fn summary(&self) -> &'static str {
        "Check that the world carries signal: base alignment and detail spread (needs score), judges on held-out detail-only pairs (needs world, pickscore-train; the SPM at noisy t also clip-pretrain, base-pretrain, train-spm), SPO's pass rate (needs spo)"
    }
    fn params(&self) -> Vec<ParamSpec> {
        CalibrateParams::specs()
    }
    fn run(&self, cx: &mut StageContext) -> Result<(), StageError> {
        let mut checks = Vec::new();
        if let Some(score) = cx.optional_input_of_kind("score")? {
            checks.extend(base_checks(score)?);
        }
        if let Some(pickscore) = cx.optional_input_of_kind("pickscore-train")? {
            checks.extend(judges(cx, pickscore)?);
        }
        if let Some(spo) = cx.optional_input_of_kind("spo")? {
            checks.extend(spo_checks(spo));
        }
        if checks.is_empty() {
            return Err(StageError::Failed(format!(
                "stage `{}` has nothing to check: it needs a `score` (base), a `pickscore-train` \
                 (judges) or an `spo` cell",
                cx.stage()
            )));
        }
        write_checks(cx, &checks)?;
        for c in &checks {
            cx.metric(&c.name, c.value);
        }
        let failed = checks
            .iter()
            .filter(|c| c.bar.is_some_and(|b| !b.met(c.value)))
            .count();
        cx.metric("checks_failed", failed as f64);
        Ok(())
    }
}

/// The judges' checks: the PickScore analogue on detail-only pairs, and with a `train-spm`
/// input the SPM and its parent on the base model's x₀-predictions.
fn judges(cx: &StageContext, pickscore: &Input) -> Result<Vec<Check>> {
    let p = CalibrateParams::from_params(cx.params())?;
    let seed = p.seed;
    let dev = device();
    let world = WorldData::load(cx.input_of_kind("world")?)?;
    let pairs = detail_pairs(&world, p.pairs, 1.0 - p.clean_share, seed)?;
    if pairs.is_empty() {
        return Err(StageError::Failed(
            "no detail-only pair has a detail gap to judge; raise `pairs`".into(),
        )
        .into());
    }
    let pickscore = WorldClip::load(pickscore, &dev)?;
    let mut checks = pickscore_checks(&pickscore, &pairs)?;
    if let Some(spm) = cx.optional_input_of_kind("train-spm")? {
        let models = JudgeModels {
            pickscore: &pickscore,
            text: InWorldClip::load(cx.input_of_kind("clip-pretrain")?, &dev)?,
            unet: load_unet(cx.input_of_kind("base-pretrain")?, &dev)?,
            spm: crate::spm::load(spm, &dev)?,
            cfg: p.cfg,
            dev: &dev,
        };
        checks.extend(on_cores(cx.threads(), || {
            noisy_judge_checks(&models, &pairs, seed)
        })?);
        if p.pool_prompts > 0 {
            let found = on_cores(cx.threads(), || {
                pool_accuracies(&models, &world, p.pool_prompts, seed)
            })?;
            checks.extend(pool_checks(&found));
        }
    }
    Ok(checks)
}

/// Each judge's right picks within SPO's pools, per branch timestep and over all of them.
fn pool_checks(found: &[PoolAccuracy]) -> Vec<Check> {
    let mut out = Vec::new();
    for judge in ["spm", "pickscore_x0", "oracle_x0"] {
        let mine: Vec<&PoolAccuracy> = found.iter().filter(|a| a.judge == judge).collect();
        for a in &mine {
            out.push(check(
                "pools",
                format!("{judge}_pool_acc_t{}", a.t),
                a.accuracy,
                None,
            ));
        }
        let mean = mine.iter().map(|a| a.accuracy).sum::<f64>() / mine.len().max(1) as f64;
        out.push(check("pools", format!("{judge}_pool_acc"), mean, None));
    }
    out
}

fn check(group: &'static str, name: impl Into<String>, value: f64, bar: Option<Bar>) -> Check {
    Check {
        group,
        name: name.into(),
        value,
        bar,
    }
}

fn metric_of(input: &Input, name: &str) -> Result<f64> {
    Ok(input.metric(name).ok_or_else(|| StageError::Input {
        need: input.stage.clone(),
        message: format!("it records no metric `{name}`"),
    })?)
}

/// Alignment and detail of the base model's samples (a `score` cell of them), and the AUC of
/// the detail metric between clean renders (detail 1) and those samples.
fn base_checks(score: &Input) -> Result<Vec<Check>> {
    let path = score.file("scores.parquet")?;
    let mut detail = Vec::new();
    each_row(&path, &["detail"], |c, i| {
        detail.push(f64_at(c[0], i).ok_or_else(|| {
            StageError::Failed(format!("{}: row {i}: `detail` is null", path.display()))
        })?);
        Ok(())
    })?;
    // A clean render's graded detail is exactly 1: it wins unless a sample also scores 1.
    let auc = detail
        .iter()
        .map(|&d| if d < 1.0 { 1.0 } else { 0.5 })
        .sum::<f64>()
        / detail.len().max(1) as f64;
    Ok(vec![
        check(
            "base",
            "base_alignment",
            metric_of(score, "alignment")?,
            Some(Bar::AtLeast(0.6)),
        ),
        check(
            "base",
            "base_detail",
            metric_of(score, "detail")?,
            Some(Bar::Within(0.3, 0.7)),
        ),
        check(
            "base",
            "base_detail_sd",
            metric_of(score, "detail_sd")?,
            Some(Bar::AtLeast(0.1)),
        ),
        check("base", "base_detail_auc", auc, Some(Bar::AtLeast(0.9))),
    ])
}

/// Two renders of one scene differing in detail only, and which is better.
pub struct DetailPair {
    prompt: String,
    images: [RgbImage; 2],
    /// The scene's clean render, the oracle's reference.
    clean: RgbImage,
    /// Index (0 or 1) of the image with the higher graded detail.
    better: usize,
    /// The flaw of the worse image.
    worse_flaw: FlawKind,
}

/// Up to `n` detail-only pairs over the validation scenes (cycled), each image flawed with
/// probability `flawed_share`; pairs closer than [`MIN_GAP`] in graded detail are dropped.
pub fn detail_pairs(
    world: &WorldData,
    n: usize,
    flawed_share: f64,
    seed: u64,
) -> Result<Vec<DetailPair>> {
    let mix = QualityMix {
        flawed_share,
        strength: (0.1, 1.0),
    };
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let prompt = &world.validation[i % world.validation.len().max(1)];
        let clean = render(&world.atlas, &prompt.scene)?;
        let draw = |k: u64| -> Result<(RgbImage, Option<FlawKind>, f64)> {
            let (im, flaw) = mix.render(&world.atlas, &prompt.scene, seed, 2 * i as u64 + k)?;
            let q = quality_from_high_pass(high_pass_distance(&im, &clean)?);
            Ok((im, flaw.map(|f| f.kind), q))
        };
        let (a, fa, qa) = draw(0)?;
        let (b, fb, qb) = draw(1)?;
        if (qa - qb).abs() < MIN_GAP {
            continue;
        }
        let better = usize::from(qb > qa);
        let Some(worse_flaw) = (if better == 0 { fb } else { fa }) else {
            continue;
        };
        out.push(DetailPair {
            prompt: prompt.text.clone(),
            images: [a, b],
            clean,
            better,
            worse_flaw,
        });
    }
    Ok(out)
}

/// The judges and the base model that makes their x₀-predictions (also the pool check's).
pub(crate) struct JudgeModels<'a> {
    pub pickscore: &'a WorldClip,
    pub text: InWorldClip,
    pub unet: UNet2DConditionModel,
    pub spm: (spo_clip::Spm, crate::vocab::Vocab),
    pub cfg: f64,
    pub dev: &'a Device,
}

/// Share of pairs whose better image scores higher (equal scores count half).
fn accuracy<'a>(pairs: impl Iterator<Item = (&'a DetailPair, [f64; 2])>) -> f64 {
    let (mut right, mut n) = (0.0, 0usize);
    for (p, s) in pairs {
        n += 1;
        right += if s[0] == s[1] {
            0.5
        } else if (s[1] > s[0]) == (p.better == 1) {
            1.0
        } else {
            0.0
        };
    }
    if n == 0 { f64::NAN } else { right / n as f64 }
}

/// Scores of both images of each pair, `[pair][image]`.
fn pair_scores(flat: &[f64], n: usize) -> Vec<[f64; 2]> {
    (0..n).map(|i| [flat[i], flat[n + i]]).collect()
}

/// Both images of every pair, first images first, and their prompts likewise.
fn flat(pairs: &[DetailPair]) -> (Vec<&RgbImage>, Vec<&str>) {
    let images = pairs
        .iter()
        .map(|p| &p.images[0])
        .chain(pairs.iter().map(|p| &p.images[1]))
        .collect();
    let prompts = pairs
        .iter()
        .map(|p| p.prompt.as_str())
        .chain(pairs.iter().map(|p| p.prompt.as_str()))
        .collect();
    (images, prompts)
}

/// The PickScore analogue's accuracy on detail-only pairs: overall, then per kind of flaw of
/// the worse image (kinds with no pair left out), as `(name, accuracy)`.
pub fn pickscore_detail_accuracy(
    pickscore: &WorldClip,
    pairs: &[DetailPair],
) -> Result<Vec<(String, f64)>> {
    let (images, prompts) = flat(pairs);
    let scores = pair_scores(&pickscores(pickscore, &images, &prompts)?, pairs.len());
    let mut out = vec![(
        "pickscore_detail_acc".to_owned(),
        accuracy(pairs.iter().zip(scores.iter().copied())),
    )];
    for kind in FlawKind::ALL {
        let acc = accuracy(
            pairs
                .iter()
                .zip(scores.iter().copied())
                .filter(|(p, _)| p.worse_flaw == kind),
        );
        if acc.is_finite() {
            out.push((
                format!("pickscore_acc_{}", kind.name().replace('-', "_")),
                acc,
            ));
        }
    }
    Ok(out)
}

fn pickscore_checks(pickscore: &WorldClip, pairs: &[DetailPair]) -> Result<Vec<Check>> {
    let mut checks = vec![check("judges", "detail_pairs", pairs.len() as f64, None)];
    for (name, acc) in pickscore_detail_accuracy(pickscore, pairs)? {
        let bar = if name == "pickscore_detail_acc" {
            0.8
        } else {
            0.7
        };
        checks.push(check("judges", name, acc, Some(Bar::AtLeast(bar))));
    }
    Ok(checks)
}

/// The SPM and its parent on the base model's x₀-predictions in each timestep bin, and the
/// graded oracle on the same predictions.
fn noisy_judge_checks(m: &JudgeModels, pairs: &[DetailPair], seed: u64) -> Result<Vec<Check>> {
    let n = pairs.len();
    let (images, prompts) = flat(pairs);
    let mut checks = Vec::new();
    let ddim = Ddim::new(NoiseSchedule::new(SchedulerConfig::sd15())?, 20, 1.0)?;
    let mut rng = SeededRng::new(seed ^ 0xCA11_B8A7E);
    let x0 = images_to_tensor(&images, m.dev)?;
    let (spm, vocab) = &m.spm;
    let ids = vocab.batch(&prompts, m.dev)?;
    for (lo, hi) in T_BINS {
        // one t and one noise per pair, shared by its two images, as train-spm does
        let ts: Vec<usize> = rng
            .indices(n, hi - lo)
            .into_iter()
            .map(|t| lo + t)
            .collect();
        let ts2: Vec<usize> = ts.iter().chain(&ts).copied().collect();
        let (_, c, h, w) = x0.dims4()?;
        let noise = rng
            .normal((n, c, h, w), 0.0, 1.0, DType::F32, m.dev)
            .and_then(|e| Tensor::cat(&[&e, &e], 0))?;
        let t_tensor = Tensor::from_vec(
            ts2.iter().map(|&t| t as i64).collect::<Vec<_>>(),
            2 * n,
            m.dev,
        )?;
        let xt = ddim.schedule().add_noise(&x0, &noise, &t_tensor)?;
        let mut x0_hat = Vec::new();
        for chunk in (0..2 * n).collect::<Vec<_>>().chunks(64) {
            let (a, len) = (chunk[0], chunk.len());
            let x = xt.narrow(0, a, len)?;
            let eps = m.text.guided_eps(
                &m.unet,
                &x,
                &ts2[a..a + len],
                &prompts[a..a + len],
                m.cfg,
                m.dev,
            )?;
            let (pred, _) = ddim.predict_x0_and_eps(&eps, &ts2[a..a + len], &x)?;
            x0_hat.push(pred.clamp(-1f32, 1f32)?);
        }
        let x0_hat = Tensor::cat(&x0_hat, 0).and_then(|t| t.contiguous())?;
        let tf: Vec<f32> = ts2.iter().map(|&t| t as f32).collect();
        let spm_scores = spm.score(&x0_hat, &ids, &tf)?;
        let hat_images = tensor_to_images(&x0_hat)?;
        let hat_refs: Vec<&RgbImage> = hat_images.iter().collect();
        let pick_hat = pickscores(m.pickscore, &hat_refs, &prompts)?;
        let oracle_hat = hat_images
            .iter()
            .zip(pairs.iter().chain(pairs))
            .map(|(im, p)| Ok(quality_from_high_pass(high_pass_distance(im, &p.clean)?)))
            .collect::<Result<Vec<f64>, spo_world::WorldError>>()?;
        let spm_acc = accuracy(pairs.iter().zip(pair_scores(&spm_scores, n)));
        let pick_acc = accuracy(pairs.iter().zip(pair_scores(&pick_hat, n)));
        let oracle_acc = accuracy(pairs.iter().zip(pair_scores(&oracle_hat, n)));
        let (bar_spm, bar_gain) = match lo {
            250 => (Some(Bar::AtLeast(0.75)), Some(Bar::AtLeast(0.03))),
            500 => (Some(Bar::AtLeast(0.65)), Some(Bar::AtLeast(0.03))),
            _ => (None, None),
        };
        checks.push(check(
            "judges",
            format!("spm_acc_t{lo}_{hi}"),
            spm_acc,
            bar_spm,
        ));
        checks.push(check(
            "judges",
            format!("pickscore_x0_acc_t{lo}_{hi}"),
            pick_acc,
            None,
        ));
        checks.push(check(
            "judges",
            format!("oracle_x0_acc_t{lo}_{hi}"),
            oracle_acc,
            None,
        ));
        checks.push(check(
            "judges",
            format!("spm_gain_t{lo}_{hi}"),
            spm_acc - pick_acc,
            bar_gain,
        ));
    }
    Ok(checks)
}

/// SPO's own record: valid-pair rate, pairs kept, mean |r − 1| of the clamped ratios.
fn spo_checks(spo: &Input) -> Vec<Check> {
    let bars: BTreeMap<&str, Bar> = [
        ("valid_pair_rate", Bar::Within(0.3, 0.7)),
        ("pairs", Bar::AtLeast(500.0)),
        ("ratio_deviation", Bar::AtLeast(0.01)),
    ]
    .into();
    bars.into_iter()
        .filter_map(|(name, bar)| {
            spo.metric(name)
                .map(|v| check("spo", format!("spo_{name}"), v, Some(bar)))
        })
        .collect()
}

fn write_checks(cx: &mut StageContext, checks: &[Check]) -> Result<()> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("group", DataType::Utf8, false),
        Field::new("check", DataType::Utf8, false),
        Field::new("value", DataType::Float64, false),
        Field::new("bar", DataType::Utf8, true),
        Field::new("met", DataType::Boolean, true),
    ]));
    let columns = vec![
        col(StringArray::from_iter_values(
            checks.iter().map(|c| c.group),
        )),
        col(StringArray::from_iter_values(
            checks.iter().map(|c| c.name.as_str()),
        )),
        col(Float64Array::from_iter_values(
            checks.iter().map(|c| c.value),
        )),
        col(StringArray::from_iter(
            checks.iter().map(|c| c.bar.map(Bar::text)),
        )),
        col(BooleanArray::from_iter(
            checks.iter().map(|c| c.bar.map(|b| b.met(c.value))),
        )),
    ];
    write_table(cx, "checks.parquet", schema, columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worlddata::Prompt;
    use spo_world::{World, WorldConfig};

    fn world() -> WorldData {
        let w = World::build(&WorldConfig {
            train_prompts: 20,
            validation_prompts: 12,
            objects: 6,
            ..WorldConfig::default()
        })
        .unwrap();
        let prompts = |set: &[spo_world::PromptRecord]| {
            set.iter()
                .map(|r| Prompt {
                    text: r.prompt.clone(),
                    scene: r.scene,
                })
                .collect()
        };
        WorldData {
            canvas: 32,
            train: prompts(&w.train),
            validation: prompts(&w.validation),
            atlas: w.atlas,
        }
    }

    #[test]
    fn detail_pairs_name_the_better_image_by_the_graded_oracle_and_skip_near_ties() {
        let w = world();
        let pairs = detail_pairs(&w, 60, 0.8, 3).unwrap();
        assert!(pairs.len() > 30 && pairs.len() <= 60, "{}", pairs.len());
        for p in &pairs {
            let clean = w
                .validation
                .iter()
                .find(|v| v.text == p.prompt)
                .map(|v| render(&w.atlas, &v.scene).unwrap())
                .unwrap();
            let q = p
                .images
                .each_ref()
                .map(|im| quality_from_high_pass(high_pass_distance(im, &clean).unwrap()));
            assert!(q[p.better] >= q[1 - p.better] + MIN_GAP, "{q:?}");
        }
        // the same seed gives the same pairs
        let again = detail_pairs(&w, 60, 0.8, 3).unwrap();
        assert!(pairs.iter().zip(&again).all(|(a, b)| a.images == b.images));
    }

    #[test]
    fn accuracy_counts_the_better_image_scoring_higher_and_ties_as_half() {
        let w = world();
        let pairs = detail_pairs(&w, 40, 0.8, 5).unwrap();
        let perfect = pairs.iter().map(|p| {
            let mut s = [0.0, 0.0];
            s[p.better] = 1.0;
            (p, s)
        });
        assert_eq!(accuracy(perfect), 1.0);
        let inverted = pairs.iter().map(|p| {
            let mut s = [1.0, 1.0];
            s[p.better] = 0.0;
            (p, s)
        });
        assert_eq!(accuracy(inverted), 0.0);
        assert_eq!(accuracy(pairs.iter().map(|p| (p, [2.0, 2.0]))), 0.5);
        assert!(accuracy(std::iter::empty()).is_nan());
        assert!(Bar::Within(0.3, 0.7).met(0.5) && !Bar::Within(0.3, 0.7).met(0.71));
        assert!(Bar::AtLeast(0.8).met(0.8) && !Bar::AtLeast(0.8).met(0.79));
    }
}
