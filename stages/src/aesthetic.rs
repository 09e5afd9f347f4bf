//! The in-world aesthetic predictor: the `aesthetic-train` stage kind and [`AestheticHead`].
//!
//! LAION's aesthetic predictor v2 is an MLP on the L2-normalised image embedding of a frozen
//! CLIP, regressed on human ratings (scorers.md §4). The in-world analogue is the same recipe
//! on the world's frozen `clip-pretrain` model, regressed on the detail-quality rating of every
//! image of the generic pairs (`truth.parquet`'s `detail`, the oracle's value in [0, 1]): it
//! rates how an image looks, not what it shows, as LAION's does.
//!
//! The head is `Linear → GELU → … → Linear(·, 1)` with nn.Sequential's key names
//! (`layers.0`, `layers.2`, …: the odd indices are the activations), widths from the
//! `hidden` param. The output folder holds the head (`aesthetic.safetensors`,
//! `aesthetic_config.json`) beside its CLIP backbone (the `clip-pretrain` files, copied), like
//! the released aesthetic folder holds ViT-L/14 and the head; the score stage also takes its
//! CLIP score backbone from there.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Linear, VarMap};
use image::RgbImage;
use spo_core::{Input, ParamSpec, StageContext, StageError, StageKind};
use spo_nn::seeded_var_builder;

use crate::clip_train::{
    CLIP_CONFIG, CLIP_VOCAB, CLIP_WEIGHTS, Metrics, Schedule, WorldClip, cell_seed,
    optimiser_params, record, split_indices_by_caption, step,
};
use crate::error::{At, Result};
use crate::training::Trainer;
use crate::world_parquet::{f64_at, i64_at};
use crate::worlddata::{Pair, each_row, load_pairs};

/// The head's weights file.
pub const HEAD_WEIGHTS: &str = "aesthetic.safetensors";
/// The head's architecture.
pub const HEAD_CONFIG: &str = "aesthetic_config.json";

/// The head's architecture, as stored in [`HEAD_CONFIG`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HeadConfig {
    /// Width of the input embedding (the CLIP's `projection_dim`).
    pub input: usize,
    /// Hidden widths, each followed by an exact GELU.
    pub hidden: Vec<usize>,
}

/// The MLP head on L2-normalised CLIP image embeddings.
pub struct AestheticHead {
    layers: Vec<Linear>,
    pub config: HeadConfig,
    pub varmap: VarMap,
}

impl AestheticHead {
    /// A new head with weights drawn from `seed`.
    pub fn new(config: HeadConfig, seed: u64, device: &Device) -> Result<Self> {
        let varmap = VarMap::new();
        let vb = seeded_var_builder(&varmap, seed, DType::F32, device);
        let layers = Self::build(&config, vb)?;
        Ok(Self {
            layers,
            config,
            varmap,
        })
    }

    fn build(config: &HeadConfig, vb: candle_nn::VarBuilder<'static>) -> Result<Vec<Linear>> {
        let widths: Vec<usize> = std::iter::once(config.input)
            .chain(config.hidden.iter().copied())
            .chain(std::iter::once(1))
            .collect();
        Ok(widths
            .windows(2)
            .enumerate()
            .map(|(i, w)| spo_nn::linear::linear(w[0], w[1], vb.pp("layers").pp(2 * i)))
            .collect::<Result<_, _>>()?)
    }

    /// Loads [`HEAD_CONFIG`] and [`HEAD_WEIGHTS`] from `dir`.
    pub fn load_dir(dir: &Path, device: &Device) -> Result<Self> {
        Self::load_files(&dir.join(HEAD_CONFIG), &dir.join(HEAD_WEIGHTS), device)
    }

    /// Loads the head of an `aesthetic-train` input.
    pub fn load(input: &Input, device: &Device) -> Result<Self> {
        Self::load_files(
            &input.file(HEAD_CONFIG)?,
            &input.file(HEAD_WEIGHTS)?,
            device,
        )
    }

    fn load_files(config: &Path, weights: &Path, device: &Device) -> Result<Self> {
        let bytes = std::fs::read(config).map_err(|e| StageError::io(config, e))?;
        let cfg: HeadConfig = serde_json::from_slice(&bytes).map_err(|e| {
            StageError::Failed(format!(
                "{}: not an aesthetic head config: {e}",
                config.display()
            ))
        })?;
        let mut head = Self::new(cfg, 0, device)?;
        if !weights.is_file() {
            return Err(StageError::io(
                weights,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            )
            .into());
        }
        head.varmap.load(weights).at(weights)?;
        Ok(head)
    }

    /// `(b, input)` normalised embeddings → `(b,)` ratings.
    pub fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = xs.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(&h)?;
            if i + 1 < self.layers.len() {
                h = spo_nn::activation::gelu_exact(&h)?;
            }
        }
        h.squeeze(1)
    }

    /// Ratings of `images` with the backbone `clip` (f64).
    pub fn rate(&self, clip: &WorldClip, images: &[&RgbImage]) -> Result<Vec<f64>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let emb = clip.image_embeddings(images)?;
        let out = self
            .forward(&emb)
            .and_then(|t| t.to_dtype(DType::F64))
            .and_then(|t| t.to_vec1::<f64>())?;
        Ok(out)
    }

    /// Writes [`HEAD_CONFIG`] and [`HEAD_WEIGHTS`] into the output.
    pub fn write(&self, cx: &mut StageContext) -> Result<()> {
        let tmp = cx.scratch_dir().join("export");
        std::fs::create_dir_all(&tmp).map_err(|e| StageError::io(&tmp, e))?;
        let path = tmp.join(HEAD_WEIGHTS);
        self.varmap.save(&path)?;
        let bytes = std::fs::read(&path).map_err(|e| StageError::io(&path, e))?;
        cx.write_artifact(HEAD_WEIGHTS, &bytes)?;
        let config = serde_json::to_vec_pretty(&self.config)?;
        Ok(cx.write_artifact(HEAD_CONFIG, &config)?)
    }
}

/// The detail-quality rating of both images of every pair, from a `world` input's
/// `truth.parquet` (rows in pair order: `ranking_id`, `side`).
pub fn detail_ratings(world: &Input, pairs: usize) -> Result<Vec<[f64; 2]>> {
    let path = world.file("truth.parquet")?;
    let mut out = vec![[f64::NAN; 2]; pairs];
    each_row(&path, &["ranking_id", "side", "detail"], |c, i| {
        let bad = |col: &str| {
            StageError::Failed(format!(
                "{}: row {i}: column `{col}` is missing, null or out of range",
                path.display()
            ))
        };
        let r = i64_at(c[0], i).ok_or_else(|| bad("ranking_id"))?;
        let s = i64_at(c[1], i).ok_or_else(|| bad("side"))?;
        let d = f64_at(c[2], i).ok_or_else(|| bad("detail"))?;
        let slot = usize::try_from(r)
            .ok()
            .and_then(|r| out.get_mut(r))
            .ok_or_else(|| bad("ranking_id"))?;
        *slot
            .get_mut(usize::try_from(s).map_err(|_| bad("side"))?)
            .ok_or_else(|| bad("side"))? = d;
        Ok(())
    })?;
    if let Some(r) = out.iter().position(|d| d.iter().any(|x| !x.is_finite())) {
        return Err(StageError::Failed(format!(
            "{}: no finite detail rating for both images of pair {r}",
            path.display()
        ))
        .into());
    }
    Ok(out)
}

spo_core::stage_params! {
    /// The params of `aesthetic-train` besides [`optimiser_params`].
    pub struct AestheticParams {
        /// images per step
        batch: usize = int(256).range(1.0, 65536.0),
        /// hidden widths of the head (each followed by GELU)
        hidden: Vec<usize> = int_list(&[128, 32]).range(1.0, 8192.0),
        /// share of the training prompts whose images are held out for validation
        holdout: f64 = float(0.1).range(0.01, 0.9),
    }
}

/// The `aesthetic-train` stage kind.
pub struct AestheticTrain;

impl StageKind for AestheticTrain {
    fn name(&self) -> &'static str {
        "aesthetic-train"
    }
    fn version(&self) -> u32 {
        // 2: CLIP's linear layers and attention are spo-nn's fused CPU ops (last-bit changes).
        2
    }
    fn summary(&self) -> &'static str {
        "Train the in-world LAION-style aesthetic head: an MLP on the frozen CLIP's normalised image embedding, regressing detail quality"
    }
    fn params(&self) -> Vec<ParamSpec> {
        let mut p = optimiser_params(1500, 2e-3, 0.01, 50);
        p.extend(AestheticParams::specs());
        p
    }
    fn run(&self, cx: &mut StageContext) -> Result<(), StageError> {
        Ok(crate::inworld::on_cores(cx.threads(), || {
            let metrics = self.train(cx)?;
            record(cx, &metrics);
            Ok(())
        })?)
    }
}

/// Normalised embeddings and ratings of both images of the pairs `rows`.
fn dataset(
    clip: &WorldClip,
    pairs: &[Pair],
    ratings: &[[f64; 2]],
    rows: &[usize],
) -> Result<(Tensor, Vec<f32>)> {
    let images: Vec<&RgbImage> = rows.iter().flat_map(|&i| pairs[i].images.iter()).collect();
    let ys: Vec<f32> = rows
        .iter()
        .flat_map(|&i| ratings[i].map(|d| d as f32))
        .collect();
    Ok((clip.image_embeddings(&images)?, ys))
}

impl AestheticTrain {
    /// Trains the head, writes it with its backbone, and returns the metrics.
    pub fn train(&self, cx: &mut StageContext) -> Result<Metrics> {
        let sched = Schedule::read(cx.params())?;
        let AestheticParams {
            batch,
            hidden,
            holdout,
        } = AestheticParams::from_params(cx.params())?;
        let seed = cell_seed(cx)?;
        let device = crate::device::device();
        let world = cx.input_of_kind("world")?;
        let pairs = load_pairs(world, 0)?;
        let ratings = detail_ratings(world, pairs.len())?;
        let backbone = cx.input_of_kind("clip-pretrain")?.clone();
        let clip = WorldClip::load(&backbone, &device)?;
        let (train, held) = split_indices_by_caption(&pairs, holdout);
        if train.is_empty() || held.is_empty() {
            return Err(StageError::Failed(format!(
                "{} pairs are too few to hold out {holdout} of their prompts",
                pairs.len()
            ))
            .into());
        }
        let (xs, ys) = dataset(&clip, &pairs, &ratings, &train)?;
        let (vx, vy) = dataset(&clip, &pairs, &ratings, &held)?;
        let ys_t = Tensor::new(ys.as_slice(), &device)?;

        let config = HeadConfig {
            input: clip.model.config().projection_dim,
            hidden,
        };
        let mut head = AestheticHead::new(config, seed, &device)?;
        let mut opt = sched.optimiser(&head.varmap)?;
        let mut t: Trainer = Trainer::start(
            cx,
            "aesthetic",
            sched.steps,
            sched.every,
            seed,
            &mut head.varmap,
            &mut opt,
        )?;
        let n = ys.len();
        let batch = batch.min(n);
        while t.step < sched.steps {
            opt.set_learning_rate(sched.lr_at(t.step));
            let rows: Vec<u32> = t
                .rng
                .indices(batch, n)
                .into_iter()
                .map(|i| i as u32)
                .collect();
            let idx = Tensor::new(rows.as_slice(), &device)?;
            let loss = xs
                .index_select(&idx, 0)
                .and_then(|x| head.forward(&x))
                .and_then(|pred| pred.sub(&ys_t.index_select(&idx, 0)?))
                .and_then(|d| d.sqr()?.mean_all())?;
            let value = step(&mut opt, &loss)?;
            t.record(value, &head.varmap, &opt)?;
        }
        t.finish(cx, "aesthetic")?;

        let pred: Vec<f64> = head
            .forward(&vx)
            .and_then(|t| t.to_dtype(DType::F64))
            .and_then(|t| t.to_vec1::<f64>())?;
        let truth: Vec<f64> = vy.iter().map(|&y| f64::from(y)).collect();
        let mean_train = ys.iter().map(|&y| f64::from(y)).sum::<f64>() / n as f64;
        let mse = mean(pred.iter().zip(&truth).map(|(a, b)| (a - b).powi(2)));
        let baseline = mean(truth.iter().map(|b| (mean_train - b).powi(2)));
        head.write(cx)?;
        for f in [CLIP_WEIGHTS, CLIP_CONFIG, CLIP_VOCAB] {
            let path = backbone.file(f)?;
            let bytes = std::fs::read(&path).map_err(|e| StageError::io(&path, e))?;
            cx.write_artifact(f, &bytes)?;
        }
        Ok(vec![
            ("val_mse", mse),
            ("val_mse_mean_predictor", baseline),
            ("val_pearson", pearson(&pred, &truth)),
            ("val_images", truth.len() as f64),
        ])
    }
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = xs.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    s / n.max(1) as f64
}

/// Pearson correlation (0 when either side is constant).
pub fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let (ma, mb) = (mean(a.iter().copied()), mean(b.iter().copied()));
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    if va <= 0.0 || vb <= 0.0 {
        0.0
    } else {
        cov / (va * vb).sqrt()
    }
}
