//! `train-spm`: the step-aware preference model of the emoji world, trained as the paper does
//! (spo-reference §3): initialised from the PickScore analogue so that at the start it equals
//! it exactly; each generic pair gets one timestep and one noise tensor shared by both images;
//! the frozen base model predicts ε with CFG and the SPM scores the one-step x₀-prediction at
//! that timestep; the loss is the 2-way cross-entropy with ties (plus log ½ so its optimum is 0),
//! each pair weighted by 1/num_example_per_prompt. The pairs are the world's and, when the cell
//! has `sample-pairs` inputs, the base model's own samples (`sampled_share` of each batch).
//! Variants for Table 5: `no-step` (the same training, time conditioning off) and `pickscore`
//! (the PickScore analogue as is, untrained).

use candle_core::{D, DType, Device, Tensor};
use candle_nn::VarMap;
use spo_clip::{ClipConfig, ClipModel, Spm, SpmVariant, init_spm_from_pickscore};
use spo_core::{Input, ParamSpec, StageContext, StageError, StageKind};
use spo_diffusion::{Ddim, NoiseSchedule, SchedulerConfig};
use spo_nn::{AdamW, AdamWConfig, named_vars, seeded_var_builder};

use crate::device::device;
use crate::error::{At, Result};
use crate::inworld::{InWorldClip, frozen_vb, json, load_unet, load_vocab, on_cores, save_varmap};
use crate::tensors::images_to_tensor;
use crate::training::Trainer;
use crate::vocab::Vocab;
use crate::worlddata::load_pairs;

/// What `train-spm` writes beside the weights.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SpmMeta {
    pub config: ClipConfig,
    pub variant: Variant,
}

spo_core::param_choice! {
    /// What `train-spm` trains: the SPM, its ablation without a time condition (Table 5), or
    /// nothing (the untrained parent, PickScore applied to x̂₀).
    pub enum Variant { Spm = "spm", NoStep = "no-step", PickScore = "pickscore" }
}

impl Variant {
    fn model(self) -> SpmVariant {
        match self {
            Variant::Spm => SpmVariant::TimeConditioned,
            Variant::NoStep => SpmVariant::NoTimeCondition,
            Variant::PickScore => SpmVariant::PickScore,
        }
    }
}

spo_core::stage_params! {
    /// The params of `train-spm`.
    pub struct SpmParams {
        /// spm, no-step (Table 5: no time condition) or pickscore (untrained parent)
        variant: Variant = choice_of(Variant::Spm),
        steps: usize = int(400).range(0.0, 1e7),
        /// pairs per step
        batch: usize = int(16).range(1.0, 4096.0),
        lr: f64 = float(1e-4).range(1e-8, 1.0),
        /// guidance of the base model's x0-prediction
        cfg: f64 = float(5.0).range(1.0, 100.0),
        /// use at most this many pairs of each input (0: all)
        pairs: usize = int(0).min(0.0),
        /// share of each batch drawn from `sample-pairs` inputs (the base's own samples), if any
        sampled_share: f64 = float(0.5).range(0.0, 1.0),
        seed: u64 = int(0).min(0.0),
        checkpoint_every: usize = int(100).range(1.0, 1e7),
    }
}

/// The `train-spm` stage kind.
pub struct TrainSpm;

impl StageKind for TrainSpm {
    fn name(&self) -> &'static str {
        "train-spm"
    }
    fn version(&self) -> u32 {
        // 3: records `cpu_seconds` (SPO's judge cost in the `curve` kind); files unchanged.
        // 2: CLIP's linear layers and attention are spo-nn's fused CPU ops (last-bit changes).
        3
    }
    fn summary(&self) -> &'static str {
        "the step-aware preference model from the PickScore analogue (needs world, clip-pretrain, base-pretrain, pickscore-train)"
    }
    fn params(&self) -> Vec<ParamSpec> {
        SpmParams::specs()
    }
    fn run(&self, cx: &mut StageContext) -> Result<(), StageError> {
        let p = SpmParams::from_params(cx.params())?;
        let dev = device();
        let parent = cx.input_of_kind("pickscore-train")?.clone();
        let (varmap, meta, vocab) = init_from_parent(&parent, p.variant, p.seed, &dev)?;
        if p.variant == Variant::PickScore {
            // the PickScore analogue as it is: nothing trained, nothing spent
            cx.metric("cpu_seconds", 0.0);
        } else {
            train(cx, &p, &varmap, &meta, &vocab, &dev)?;
        }
        save_varmap(cx, &varmap, "spm.safetensors")?;
        cx.write_artifact(
            "spm_config.json",
            &serde_json::to_vec_pretty(&meta).unwrap_or_default(),
        )?;
        cx.write_artifact("vocab.json", &vocab.to_json())?;
        Ok(())
    }
}

/// A var map holding the parent PickScore analogue plus, for `spm`, the SPM's zero-initialised
/// time modules (so that the SPM equals its parent at initialisation).
fn init_from_parent(
    parent: &Input,
    variant: Variant,
    seed: u64,
    dev: &Device,
) -> Result<(VarMap, SpmMeta, Vocab)> {
    let parent_clip = InWorldClip::load(parent, dev)?;
    let cfg = parent_clip.config.clone();
    let varmap = VarMap::new();
    ClipModel::new(&cfg, seeded_var_builder(&varmap, seed, DType::F32, dev))?;
    let weights = parent.file("clip.safetensors")?;
    let tensors = candle_core::safetensors::load(&weights, dev).at(&weights)?;
    {
        let data = varmap
            .data()
            .lock()
            .map_err(|_| StageError::Failed("var map lock poisoned".into()))?;
        for (k, var) in data.iter() {
            let t = tensors.get(k).ok_or_else(|| {
                StageError::Failed(format!("{}: no tensor `{k}`", weights.display()))
            })?;
            var.set(t)
                .map_err(|e| StageError::Failed(format!("{}: `{k}`: {e}", weights.display())))?;
        }
    }
    if variant == Variant::Spm {
        init_spm_from_pickscore(&varmap, &cfg, seed, dev)?;
    }
    Ok((
        varmap,
        SpmMeta {
            config: cfg,
            variant,
        },
        parent_clip.vocab,
    ))
}

/// Builds the SPM (or variant) over trainable `varmap`.
pub fn build(varmap: &VarMap, meta: &SpmMeta, dev: &Device) -> Result<Spm> {
    Ok(Spm::new(
        &meta.config,
        meta.variant.model(),
        seeded_var_builder(varmap, 0, DType::F32, dev),
    )?)
}

/// Loads a trained SPM (frozen) with its vocabulary.
pub fn load(input: &Input, dev: &Device) -> Result<(Spm, Vocab)> {
    let meta: SpmMeta = json(&input.file("spm_config.json")?)?;
    let vocab = load_vocab(input)?;
    let weights = input.file("spm.safetensors")?;
    let spm = Spm::new(
        &meta.config,
        meta.variant.model(),
        frozen_vb(&weights, dev)?,
    )
    .at(&weights)?;
    Ok((spm, vocab))
}

/// The SPM loss of a batch: 2-way cross-entropy with ties, weighted by 1/num_example_per_prompt.
pub fn pair_loss(
    l0: &Tensor,
    l1: &Tensor,
    labels: &[[f64; 2]],
    weights: &[f64],
) -> candle_core::Result<Tensor> {
    let dev = l0.device();
    let n = labels.len();
    let y0 = Tensor::from_vec(
        labels.iter().map(|l| l[0] as f32).collect::<Vec<_>>(),
        n,
        dev,
    )?;
    let y1 = Tensor::from_vec(
        labels.iter().map(|l| l[1] as f32).collect::<Vec<_>>(),
        n,
        dev,
    )?;
    let tie = Tensor::from_vec(
        labels
            .iter()
            .map(|l| if l[0] == l[1] { 0.5f32.ln() } else { 0.0 })
            .collect::<Vec<_>>(),
        n,
        dev,
    )?;
    let total: f64 = weights.iter().sum();
    let w = Tensor::from_vec(
        weights
            .iter()
            .map(|x| (x / total) as f32)
            .collect::<Vec<_>>(),
        n,
        dev,
    )?;
    let both = Tensor::stack(&[l0, l1], 1)?;
    let m = both.max_keepdim(1)?;
    let lse = (both.broadcast_sub(&m)?.exp()?.sum_keepdim(1)?.log()? + m)?.squeeze(1)?;
    let ce0 = (&lse - l0)?;
    let ce1 = (&lse - l1)?;
    let per = ((ce0 * y0)? + (ce1 * y1)? + tie)?;
    (per * w)?.sum_all()
}

fn train(
    cx: &mut StageContext,
    p: &SpmParams,
    varmap: &VarMap,
    meta: &SpmMeta,
    vocab: &Vocab,
    dev: &Device,
) -> Result<()> {
    let (steps, batch) = (p.steps, p.batch);
    let mut pairs = load_pairs(cx.input_of_kind("world")?, p.pairs)?;
    if pairs.is_empty() {
        return Err(StageError::Failed("the world has no preference pairs".into()).into());
    }
    let world_pairs = pairs.len();
    for sampled in cx.inputs().iter().filter(|i| i.kind == "sample-pairs") {
        pairs.extend(load_pairs(sampled, p.pairs)?);
    }
    // Pairs per step from the base's own samples (none without a `sample-pairs` input).
    let from_sampled = if pairs.len() > world_pairs {
        (batch as f64 * p.sampled_share).round() as usize
    } else {
        0
    };
    let text = InWorldClip::load(cx.input_of_kind("clip-pretrain")?, dev)?;
    let unet = load_unet(cx.input_of_kind("base-pretrain")?, dev)?;
    let ddim = Ddim::new(NoiseSchedule::new(SchedulerConfig::sd15())?, 20, 1.0)?;
    let spm = build(varmap, meta, dev)?;
    let mut vm = varmap.clone();
    let mut opt = AdamW::new(
        named_vars(varmap)?,
        AdamWConfig {
            lr: p.lr,
            ..Default::default()
        },
    )?;
    let mut tr: Trainer = Trainer::start(
        cx,
        "spm",
        steps,
        p.checkpoint_every,
        p.seed,
        &mut vm,
        &mut opt,
    )?;
    let cfg = p.cfg;
    while tr.step < steps {
        let rng = &mut tr.rng;
        let loss = on_cores(cx.threads(), || {
            let mut idx = rng.indices(batch - from_sampled, world_pairs);
            let sampled = rng.indices(from_sampled, pairs.len() - world_pairs);
            idx.extend(sampled.into_iter().map(|i| world_pairs + i));
            let b = idx.len();
            // 1. one t and one noise per pair, shared by its two images
            let ts: Vec<usize> = rng.indices(b, 1000);
            let imgs: Vec<&image::RgbImage> = idx
                .iter()
                .map(|&i| &pairs[i].images[0])
                .chain(idx.iter().map(|&i| &pairs[i].images[1]))
                .collect();
            let x0 = images_to_tensor(&imgs, dev)?;
            let noise = rng.normal((b, 3, x0.dim(2)?, x0.dim(3)?), 0.0, 1.0, DType::F32, dev)?;
            let noise = Tensor::cat(&[&noise, &noise], 0)?;
            let ts2: Vec<usize> = ts.iter().chain(ts.iter()).copied().collect();
            let t_tensor = Tensor::from_vec(
                ts2.iter().map(|&t| t as i64).collect::<Vec<_>>(),
                2 * b,
                dev,
            )?;
            let xt = ddim.schedule().add_noise(&x0, &noise, &t_tensor)?;
            // 2. the frozen base model's one-step x0-prediction with CFG
            let captions: Vec<&str> = idx.iter().map(|&i| pairs[i].caption.as_str()).collect();
            let captions2: Vec<&str> = captions.iter().chain(captions.iter()).copied().collect();
            let eps = text.guided_eps(&unet, &xt, &ts2, &captions2, cfg, dev)?;
            let (x0_hat, _) = ddim.predict_x0_and_eps(&eps, &ts2, &xt)?;
            let pixels = x0_hat
                .clamp(-1f32, 1f32)
                .and_then(|x| x.detach().contiguous())?;
            // 3. the SPM's logits at t and the loss
            let ids = vocab.batch(&captions2, dev)?;
            let tf: Vec<f32> = ts2.iter().map(|&t| t as f32).collect();
            let logits = spm.logits(&pixels, &ids, &tf)?;
            let (l0, l1) = (
                logits.narrow(D::Minus1, 0, b)?,
                logits.narrow(D::Minus1, b, b)?,
            );
            let labels: Vec<[f64; 2]> = idx.iter().map(|&i| pairs[i].labels).collect();
            let weights: Vec<f64> = idx
                .iter()
                .map(|&i| 1.0 / pairs[i].num_example_per_prompt)
                .collect();
            let loss = pair_loss(&l0, &l1, &labels, &weights)?;
            let grads = loss.backward()?;
            opt.step(&grads)?;
            Ok(loss.to_scalar::<f32>()? as f64)
        })?;
        tr.record(loss, varmap, &opt)?;
    }
    tr.finish(cx, "spm")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_loss_matches_the_reference_formula() {
        let dev = Device::Cpu;
        let l0 = Tensor::new(&[2.0f32, 0.0, 1.0], &dev).unwrap();
        let l1 = Tensor::new(&[0.0f32, 1.0, 1.0], &dev).unwrap();
        let labels = [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]];
        let got = pair_loss(&l0, &l1, &labels, &[1.0, 1.0, 2.0])
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        let ce = |a: f64, b: f64| (a.exp() + b.exp()).ln() - a;
        // pair 3 is a tie of equal logits: its loss is log 2 + log 1/2 = 0.
        let want = (ce(2.0, 0.0) * 1.0 + ce(1.0, 0.0) * 1.0 + 0.0 * 2.0) / 4.0;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }
}
