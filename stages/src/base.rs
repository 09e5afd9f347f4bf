//! `base-pretrain`: the base text-to-image model of the emoji world — diffusers' UNet layout at a
//! CPU size, trained with the standard ε-prediction loss on renders of the world's training
//! prompts of mixed quality (a share carries one of the world's detail flaws, as SD's training
//! images vary in quality, so that its samples do too), conditioned on the frozen in-world CLIP text encoder (as SD-1.5 is on
//! OpenAI CLIP), with the prompt dropped 10% of the time so classifier-free guidance works.
//!
//! This plays SD-1.5's part in the paper: the model SPO fine-tunes. It works in pixel space on
//! the 32×32 canvas (no VAE): the world is small enough that a latent space would only cost time.

use candle_core::{DType, Tensor, Var};
use candle_nn::VarMap;
use spo_core::{ParamSpec, StageContext, StageError, StageKind};
use spo_diffusion::{NoiseSchedule, SchedulerConfig};
use spo_nn::{AdamW, AdamWConfig, SeededRng, named_vars, sharded_backward};
use spo_world::QualityMix;

use crate::device::device;
use crate::embedded::{BASES, Embedded, Weights};
use crate::error::Result;
use crate::inworld::{InWorldClip, new_unet, save_varmap, unet_config};
use crate::tensors::images_to_tensor;
use crate::training::{Trainer, warmup_cosine};
use crate::worlddata::WorldData;

spo_core::stage_params! {
    /// The params of `base-pretrain`.
    pub struct BaseParams {
        /// optimizer steps
        steps: usize = int(1500).range(1.0, 1e7),
        batch: usize = int(32).range(1.0, 4096.0),
        /// peak learning rate: linear warm-up, then cosine decay to zero
        lr: f64 = float(1e-3).range(1e-7, 1.0),
        /// learning-rate warm-up steps
        warmup: usize = int(50).range(0.0, 1e7),
        /// Min-SNR loss weighting min(SNR, γ)/SNR (Hang et al. 2023); 0 = plain MSE
        min_snr_gamma: f64 = float(5.0).range(0.0, 1e3),
        /// UNet block widths (multiples of 8), one per resolution
        channels: Vec<usize> = int_list(&[32, 64, 64]).range(8.0, 1024.0),
        /// share of training images drawn with one detail flaw (kind uniform, strength uniform
        /// in [0.1, 1])
        flawed_share: f64 = float(0.5).range(0.0, 1.0),
        /// offset noise (Guttenberg 2023): each image's noise also shifts by this times one
        /// normal draw per channel, so the model cannot read an image's mean colour off a
        /// nearly pure-noise x_T (SD-1.5's schedule leaves sqrt(ᾱ_T) = 0.068 of the image in
        /// it: on a 32-pixel canvas the background shows through and samples come out gray)
        offset_noise: f64 = float(0.1).range(0.0, 1.0),
        /// share of prompts dropped for classifier-free guidance
        uncond_prob: f64 = float(0.1).range(0.0, 1.0),
        /// seed of the initial weights, batches and noise
        seed: u64 = int(0).min(0.0),
        checkpoint_every: usize = int(100).range(1.0, 1e7),
        /// train, or embedded: write the pretrained base compiled into spo-pipe (params, world
        /// and text encoder must be its recipe's)
        weights: Weights = choice_of(Weights::Train),
        /// the batch is back-propagated in this many shards, in parallel on the cores free at
        /// the time (results do not depend on the cores)
        shards: usize = int(2).range(1.0, 256.0),
    }
}

/// The `base-pretrain` stage kind.
pub struct BasePretrain;

impl StageKind for BasePretrain {
    fn name(&self) -> &'static str {
        "base-pretrain"
    }
    fn version(&self) -> u32 {
        // 6: offset noise (`offset_noise`); the world's coarser flaws.
        // 5: trained on renders of mixed quality (`flawed_share`).
        // 4: a ResNet block's GroupNorm–SiLU–conv is one fused op (last-bit changes).
        // 3: the fused CPU convolution, attention and linear ops change the last bits of
        // every forward and gradient (same model, same maths).
        6
    }
    fn summary(&self) -> &'static str {
        "train the base text-to-image UNet on the world's renders of mixed quality (needs world, clip-pretrain)"
    }
    fn params(&self) -> Vec<ParamSpec> {
        BaseParams::specs()
    }
    fn run(&self, cx: &mut StageContext) -> Result<(), StageError> {
        Ok(run(cx)?)
    }
}

/// The ε a batch shaped like `x0` is noised with: standard normal, plus, with `offset` > 0,
/// one normal draw of that std per image and channel, added to all its pixels (offset noise).
fn training_noise(rng: &mut SeededRng, x0: &Tensor, offset: f64) -> candle_core::Result<Tensor> {
    let noise = rng.normal(x0.shape(), 0.0, 1.0, DType::F32, x0.device())?;
    if offset == 0.0 {
        return Ok(noise);
    }
    let (b, c, _, _) = x0.dims4()?;
    noise.broadcast_add(&rng.normal((b, c, 1, 1), 0.0, offset, DType::F32, x0.device())?)
}

/// Computes one cell of this kind.
fn run(cx: &mut StageContext) -> Result<()> {
    let p = BaseParams::from_params(cx.params())?;
    if p.weights == Weights::Embedded {
        let world = cx.input_of_kind("world")?.clone();
        let text = cx.input_of_kind("clip-pretrain")?.clone();
        let model = Embedded::matching(&BASES, cx.stage(), cx.params())?;
        return model.write(cx, &world, Some(&text));
    }
    let (steps, batch, seed) = (p.steps, p.batch, p.seed);
    let dev = device();
    let world = WorldData::load(cx.input_of_kind("world")?)?;
    let clip = InWorldClip::load(cx.input_of_kind("clip-pretrain")?, &dev)?;

    // 1. data: renders of mixed quality and their text contexts, computed once
    let mix = QualityMix {
        flawed_share: p.flawed_share,
        strength: (0.1, 1.0),
    };
    let images: Vec<image::RgbImage> = world
        .train
        .iter()
        .enumerate()
        .map(|(i, pr)| Ok(mix.render(&world.atlas, &pr.scene, seed, i as u64)?.0))
        .collect::<Result<_, spo_world::WorldError>>()?;
    let refs: Vec<&image::RgbImage> = images.iter().collect();
    let x0_all = images_to_tensor(&refs, &dev)?;
    let texts: Vec<&str> = world.train.iter().map(|pr| pr.text.as_str()).collect();
    let ctx_all = clip.context(&texts, &dev)?;
    let uncond = clip.context(&[""], &dev)?;

    // 2. model and optimizer
    let channels = &p.channels;
    if channels.is_empty()
        || channels.len() > 4
        || !(world.canvas as usize).is_multiple_of(1 << (channels.len() - 1))
    {
        return Err(StageError::Failed(format!(
            "param `channels`: {} blocks do not fit a {}-pixel canvas (1 to 4 blocks, canvas divisible by 2^(blocks-1))",
            channels.len(),
            world.canvas
        )).into());
    }
    let config = unet_config(
        world.canvas as usize,
        channels,
        clip.config.text_config.hidden_size,
    );
    let mut varmap = VarMap::new();
    let unet = new_unet(&config, &varmap, seed, &dev)?;
    let mut opt = AdamW::new(
        named_vars(&varmap)?,
        AdamWConfig {
            lr: p.lr,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    let schedule = NoiseSchedule::new(SchedulerConfig::sd15())?;
    let train_steps = schedule.config().num_train_timesteps;
    let mut tr: Trainer = Trainer::start(
        cx,
        "base",
        steps,
        p.checkpoint_every,
        seed,
        &mut varmap,
        &mut opt,
    )?;
    let uncond_prob = p.uncond_prob;
    let shards = p.shards.min(batch);
    let vars: Vec<Var> = named_vars(&varmap)?.into_iter().map(|(_, v)| v).collect();
    let (lr, warmup, gamma) = (p.lr, p.warmup, p.min_snr_gamma);
    let snr_weight: Vec<f32> = schedule
        .alphas_cumprod()
        .iter()
        .map(|&a| {
            let snr = a / (1.0 - a);
            if gamma > 0.0 {
                (snr.min(gamma) / snr) as f32
            } else {
                1.0
            }
        })
        .collect();

    // 3. ε-prediction training
    while tr.step < steps {
        opt.set_learning_rate(lr * warmup_cosine(tr.step, steps, warmup));
        let idx: Vec<u32> = tr
            .rng
            .indices(batch, images.len())
            .into_iter()
            .map(|i| i as u32)
            .collect();
        let idx_t = Tensor::from_vec(idx.clone(), batch, &dev)?;
        let x0 = x0_all.index_select(&idx_t, 0)?;
        let mut ctx_rows = Vec::with_capacity(batch);
        let drops: Vec<usize> = tr.rng.indices(batch, 1_000_000);
        for (k, &i) in idx.iter().enumerate() {
            let row = if (drops[k] as f64) < uncond_prob * 1e6 {
                uncond.clone()
            } else {
                ctx_all.narrow(0, i as usize, 1)?
            };
            ctx_rows.push(row);
        }
        let ctx = Tensor::cat(&ctx_rows, 0)?;
        let ts: Vec<usize> = tr.rng.indices(batch, train_steps);
        let weights: Vec<f32> = ts.iter().map(|&t| snr_weight[t]).collect();
        let weights = Tensor::from_vec(weights, (batch, 1, 1, 1), &dev)?;
        let ts: Vec<i64> = ts.into_iter().map(|t| t as i64).collect();
        let ts = Tensor::from_vec(ts, batch, &dev)?;
        let noise = training_noise(&mut tr.rng, &x0, p.offset_noise)?;
        let xt = schedule.add_noise(&x0, &noise, &ts)?;
        let denom = noise.elem_count() as f64;
        let shard_loss = |s: usize| -> Result<Tensor, spo_diffusion::DiffusionError> {
            let (lo, hi) = (s * batch / shards, (s + 1) * batch / shards);
            let rows = |t: &Tensor| t.narrow(0, lo, hi - lo);
            let pred = unet.forward(&rows(&xt)?, &rows(&ts)?, &rows(&ctx)?, None)?;
            Ok(((pred - rows(&noise)?)?
                .sqr()?
                .broadcast_mul(&rows(&weights)?)?
                .sum_all()?
                / denom)?)
        };
        let (l, grads) = sharded_backward(shards, cx.threads(), &vars, shard_loss)?;
        opt.step(&grads)?;
        tr.record(l, &varmap, &opt)?;
    }
    tr.finish(cx, "base")?;

    // 4. outputs
    save_varmap(cx, &varmap, "unet.safetensors")?;
    cx.write_artifact(
        "unet_config.json",
        &serde_json::to_vec_pretty(&config).unwrap_or_default(),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Spread of the per-image, per-channel means of the training noise.
    fn mean_spread(offset: f64) -> f32 {
        let x0 = Tensor::zeros((64, 3, 32, 32), DType::F32, &Device::Cpu).unwrap();
        let noise = training_noise(&mut SeededRng::new(3), &x0, offset).unwrap();
        let means = noise
            .mean_keepdim(3)
            .unwrap()
            .mean_keepdim(2)
            .unwrap()
            .flatten_all()
            .unwrap();
        means
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap()
            .sqrt()
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    /// Without offset noise an image's mean is known to ±1/32 from x_T alone; with it, to
    /// ±√(1/1024 + offset²): the model can no longer read the background off pure noise.
    #[test]
    fn offset_noise_shifts_each_image_and_channel_as_a_whole() {
        let plain = mean_spread(0.0);
        assert!((0.026..0.037).contains(&plain), "{plain}");
        let offset = mean_spread(0.1);
        assert!((0.09..0.12).contains(&offset), "{offset}");
    }
}
