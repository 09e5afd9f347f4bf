//! `sample-pairs`: generic preference pairs of the base model's own samples, as Pick-a-Pic's
//! pairs are Stable Diffusion's generations. For each of the first N training prompts, two DDIM
//! chains (CFG, η = 1 by default) draw an image each, from their own x_T or sharing the first
//! `shared_steps` steps; the world's simulated annotator (the world's weights, noise and tie
//! margin, each overridable) labels the pair from what the oracles parse in each image. Writes
//! `pairs.parquet` in Pick-a-Pic's schema, which `train-spm` reads beside the world's own pairs.

use candle_core::{DType, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use spo_core::{ParamSpec, StageContext, StageError, StageKind};
use spo_diffusion::{Ddim, NoiseSchedule, SchedulerConfig};
use spo_nn::SeededRng;

use crate::device::device;
use crate::error::Result;
use crate::inworld::{InWorldClip, load_unet, on_cores};
use crate::pickapic::{PairRow, PairsWriter};
use crate::tensors::{png_bytes, tensor_to_images};
use crate::worlddata::{WorldData, world_annotator};

spo_core::stage_params! {
    /// The params of `sample-pairs`.
    pub struct SamplePairsParams {
        /// training prompts (from the start of the set), one pair each
        prompts: usize = int(256).range(1.0, 1e6),
        /// DDIM steps
        steps: usize = int(20).range(1.0, 1000.0),
        /// classifier-free guidance scale
        cfg: f64 = float(5.0).range(1.0, 100.0),
        /// DDIM stochasticity (must be > 0 when the chains share steps)
        eta: f64 = float(1.0).range(0.0, 1.0),
        /// steps both chains of a pair share before they branch (0: their own x_T)
        shared_steps: usize = int(0).range(0.0, 999.0),
        /// pairs sampled at once
        batch: usize = int(32).range(1.0, 4096.0),
        /// the annotator's weight of alignment on these pairs (negative: the world's)
        alignment_weight: f64 = float(-1.0).range(-1.0, 100.0),
        /// the annotator's weight of graded detail on these pairs (negative: the world's)
        detail_weight: f64 = float(-1.0).range(-1.0, 100.0),
        /// std of the annotator's noise on these pairs' utilities (negative: the world's)
        annotator_noise: f64 = float(-1.0).range(-1.0, 10.0),
        /// utilities closer than this are a tie (negative: the world's margin)
        tie_margin: f64 = float(-1.0).range(-1.0, 10.0),
        seed: u64 = int(0).min(0.0),
    }
}

/// The `sample-pairs` stage kind.
pub struct SamplePairs;

impl StageKind for SamplePairs {
    fn name(&self) -> &'static str {
        "sample-pairs"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "generic preference pairs of the base model's own samples, labelled by the world's annotator (needs world, clip-pretrain, base-pretrain)"
    }
    fn params(&self) -> Vec<ParamSpec> {
        SamplePairsParams::specs()
    }
    fn run(&self, cx: &mut StageContext) -> Result<(), StageError> {
        Ok(run(cx)?)
    }
}

fn run(cx: &mut StageContext) -> Result<()> {
    let p = SamplePairsParams::from_params(cx.params())?;
    if p.shared_steps >= p.steps {
        return Err(StageError::Failed(format!(
            "shared_steps = {} must be below steps = {}: the two chains of a pair must branch",
            p.shared_steps, p.steps
        ))
        .into());
    }
    if p.shared_steps > 0 && p.eta == 0.0 {
        return Err(StageError::Failed(
            "shared_steps > 0 needs eta > 0: deterministic chains from one state never differ"
                .into(),
        )
        .into());
    }
    let dev = device();
    let world_input = cx.input_of_kind("world")?.clone();
    let world = WorldData::load(&world_input)?;
    let mut annotator = world_annotator(&world_input)?;
    if p.alignment_weight >= 0.0 {
        annotator.alignment_weight = p.alignment_weight;
    }
    if p.detail_weight >= 0.0 {
        annotator.detail_weight = p.detail_weight;
    }
    if p.annotator_noise >= 0.0 {
        annotator.noise = p.annotator_noise;
    }
    if p.tie_margin >= 0.0 {
        annotator.tie_margin = p.tie_margin;
    }
    let clip = InWorldClip::load(cx.input_of_kind("clip-pretrain")?, &dev)?;
    let unet = load_unet(cx.input_of_kind("base-pretrain")?, &dev)?;
    let ddim = Ddim::new(NoiseSchedule::new(SchedulerConfig::sd15())?, p.steps, p.eta)?;
    let n = p.prompts.min(world.train.len());
    let size = world.canvas as usize;
    let mut label_rng = ChaCha8Rng::seed_from_u64(p.seed ^ 0x5a3b_1e55);
    let (mut ties, mut detail_gap, mut align_gap) = (0usize, 0.0, 0.0);
    let bar = cx.progress(n as u64, "pairs");
    let mut rows = Vec::with_capacity(n);
    for start in (0..n).step_by(p.batch) {
        let chunk: Vec<usize> = (start..(start + p.batch).min(n)).collect();
        let b = chunk.len();
        let texts: Vec<&str> = chunk
            .iter()
            .map(|&i| world.train[i].text.as_str())
            .collect();
        let texts2: Vec<&str> = texts.iter().chain(texts.iter()).copied().collect();
        let (cond, cond2) = (
            clip.conditioning(&texts, &dev)?,
            clip.conditioning(&texts2, &dev)?,
        );
        let mut rng = SeededRng::new(p.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ start as u64);
        let chains = if p.shared_steps == 0 { 2 * b } else { b };
        let mut x = rng.normal((chains, 3, size, size), 0.0, 1.0, DType::F32, &dev)?;
        let (eta, cfg) = (p.eta, p.cfg);
        x = on_cores(cx.threads(), || {
            for (k, &t) in ddim.timesteps().iter().enumerate() {
                if k == p.shared_steps && p.shared_steps > 0 {
                    x = Tensor::cat(&[&x, &x], 0)?;
                }
                let c = if x.dim(0)? == b { &cond } else { &cond2 };
                let ts = vec![t; x.dim(0)?];
                let eps = c.guided_eps(&unet, &x, &ts, cfg)?;
                let z = if eta > 0.0 {
                    Some(rng.normal(x.shape(), 0.0, 1.0, DType::F32, &dev)?)
                } else {
                    None
                };
                x = ddim.step(&eps, &ts, &x, z.as_ref())?.0;
            }
            Ok(x)
        })?;
        let images = tensor_to_images(&x)?;
        for (j, &i) in chunk.iter().enumerate() {
            let scene = &world.train[i].scene;
            let pair = [&images[j], &images[b + j]];
            let mut utility = [0.0; 2];
            let mut judged = Vec::with_capacity(2);
            for (side, im) in pair.iter().enumerate() {
                let jd = spo_world::judge(&world.atlas, scene, im)?;
                utility[side] =
                    annotator.utility(jd.alignment.score(), jd.detail.quality, &mut label_rng);
                judged.push(jd);
            }
            let labels = annotator.label(utility[0], utility[1]);
            ties += usize::from(labels[0] == labels[1]);
            detail_gap += (judged[0].detail.quality - judged[1].detail.quality).abs();
            align_gap += (judged[0].alignment.score() - judged[1].alignment.score()).abs();
            rows.push(PairRow::generated(
                i as i64,
                world.train[i].text.clone(),
                [png_bytes(pair[0])?, png_bytes(pair[1])?],
                labels,
                ["base", "base"],
                1,
            ));
        }
        bar.inc(b as u64);
    }
    bar.finish_and_clear();
    let mut out = PairsWriter::create(cx, "pairs.parquet")?;
    for row in rows {
        out.push(row)?;
    }
    out.finish()?;
    let pairs = n.max(1) as f64;
    cx.metric("pairs", n as f64);
    cx.metric("tie_share", ties as f64 / pairs);
    cx.metric("mean_detail_gap", detail_gap / pairs);
    cx.metric("mean_alignment_gap", align_gap / pairs);
    Ok(())
}
