//! `sample`: images from the base model (with an SPO LoRA when one of the inputs has
//! `lora.safetensors`) for the validation prompts — DDIM, classifier-free guidance, N images per
//! prompt, each from its own recorded seed. Writes `samples.parquet` (prompt_index, prompt,
//! scene, seed, image as PNG bytes) and a `grid.png` of the first images.

use std::sync::Arc;

use arrow_array::{BinaryArray, Int64Array, StringArray};
use arrow_schema::{DataType, Field, Schema};
use candle_core::{DType, Tensor};
use image::RgbImage;
use indicatif::ProgressBar;
use spo_core::{ParamSpec, StageContext, StageError, StageKind};
use spo_diffusion::{Ddim, NoiseSchedule, SchedulerConfig, UNet2DConditionModel};
use spo_nn::SeededRng;

use crate::device::device;
use crate::error::{At, Result};
use crate::inworld::{InWorldClip, load_unet, on_cores};
use crate::tensors::{png_bytes, tensor_to_images};
use crate::world_parquet::{col, write_table};
use crate::worlddata::WorldData;

spo_core::stage_params! {
    /// The params of `sample`.
    pub struct SampleParams {
        /// DDIM steps
        steps: usize = int(20).range(1.0, 1000.0),
        /// classifier-free guidance scale
        cfg: f64 = float(5.0).range(1.0, 100.0),
        /// DDIM stochasticity
        eta: f64 = float(0.0).range(0.0, 1.0),
        /// how many validation prompts (from the start of the set)
        prompts: usize = int(64).range(1.0, 1e6),
        /// images per prompt
        per_prompt: usize = int(2).range(1.0, 1000.0),
        batch: usize = int(32).range(1.0, 4096.0),
    }
}

/// The `sample` stage kind.
pub struct Sample;

impl StageKind for Sample {
    fn name(&self) -> &'static str {
        "sample"
    }
    fn version(&self) -> u32 {
        // 3: a ResNet block's GroupNorm–SiLU–conv is one fused op (last-bit changes).
        // 2: the fused CPU convolution, attention and linear ops (last-bit changes).
        3
    }
    fn summary(&self) -> &'static str {
        "DDIM samples for the validation prompts (needs world, clip-pretrain, base-pretrain; optional spo)"
    }
    fn params(&self) -> Vec<ParamSpec> {
        SampleParams::specs()
    }
    fn seeded(&self) -> bool {
        true
    }
    fn run(&self, cx: &mut StageContext) -> Result<(), StageError> {
        Ok(run(cx)?)
    }
}

/// Computes one cell of this kind.
fn run(cx: &mut StageContext) -> Result<()> {
    let p = SampleParams::from_params(cx.params())?;
    let dev = device();
    let world = WorldData::load(cx.input_of_kind("world")?)?;
    let clip = InWorldClip::load(cx.input_of_kind("clip-pretrain")?, &dev)?;
    let mut unet = load_unet(cx.input_of_kind("base-pretrain")?, &dev)?;
    if let Some(lora) = cx
        .inputs()
        .iter()
        .find_map(|i| i.file("lora.safetensors").ok())
    {
        unet.load_lora(&lora).at(&lora)?;
    }
    let seed = cx.seed().unwrap_or(0);
    let jobs = jobs(seed, &world, &p);
    let pb = cx.progress(jobs.len() as u64, "sample");
    let images = draw(&unet, &clip, &world, &p, &jobs, cx.threads(), &pb)?;
    pb.finish_and_clear();

    let schema = Arc::new(Schema::new(vec![
        Field::new("prompt_index", DataType::Int64, false),
        Field::new("prompt", DataType::Utf8, false),
        Field::new("scene", DataType::Utf8, false),
        Field::new("seed", DataType::Int64, false),
        Field::new("image", DataType::Binary, false),
    ]));
    let pngs: Vec<Vec<u8>> = images.iter().map(png_bytes).collect::<Result<_, _>>()?;
    let cols = vec![
        col(Int64Array::from(
            jobs.iter().map(|(i, _)| *i as i64).collect::<Vec<_>>(),
        )),
        col(StringArray::from(
            jobs.iter()
                .map(|(i, _)| world.validation[*i].text.clone())
                .collect::<Vec<_>>(),
        )),
        col(StringArray::from(
            jobs.iter()
                .map(|(i, _)| world.validation[*i].scene.code(&world.atlas))
                .collect::<Vec<_>>(),
        )),
        col(Int64Array::from(
            jobs.iter().map(|(_, s)| *s as i64).collect::<Vec<_>>(),
        )),
        col(BinaryArray::from(
            pngs.iter().map(Vec::as_slice).collect::<Vec<_>>(),
        )),
    ];
    write_table(cx, "samples.parquet", schema, cols)?;
    cx.write_artifact("grid.png", &png_bytes(&grid(&images, 8, 8))?)?;
    cx.metric("images", images.len() as f64);
    Ok(())
}

/// The images of a run with seed `seed`: (validation prompt, image seed) for `p.per_prompt`
/// images of each of the first `p.prompts` validation prompts (all of them, if fewer).
pub fn jobs(seed: u64, world: &WorldData, p: &SampleParams) -> Vec<(usize, u64)> {
    image_jobs(seed, p.prompts.min(world.validation.len()), p.per_prompt)
}

/// (prompt, image seed) for `per_prompt` images of each of `prompts` prompts in a run with seed
/// `seed`: the job list of every sampling kind, in the world or on real weights.
pub(crate) fn image_jobs(seed: u64, prompts: usize, per_prompt: usize) -> Vec<(usize, u64)> {
    (0..prompts)
        .flat_map(|i| (0..per_prompt).map(move |k| (i, image_seed(seed, i, k))))
        .collect()
}

/// Draws `jobs` (from [`jobs`]) with `unet` as `p` says (DDIM, guidance), `p.batch` at a time on
/// `threads` cores, advancing `pb` per image.
pub fn draw(
    unet: &UNet2DConditionModel,
    clip: &InWorldClip,
    world: &WorldData,
    p: &SampleParams,
    jobs: &[(usize, u64)],
    threads: usize,
    pb: &ProgressBar,
) -> Result<Vec<RgbImage>> {
    let dev = device();
    let ddim = Ddim::new(NoiseSchedule::new(SchedulerConfig::sd15())?, p.steps, p.eta)?;
    let size = world.canvas as usize;
    let mut images: Vec<RgbImage> = Vec::with_capacity(jobs.len());
    for chunk in jobs.chunks(p.batch) {
        let texts: Vec<&str> = chunk
            .iter()
            .map(|(i, _)| world.validation[*i].text.as_str())
            .collect();
        let prompts = clip.conditioning(&texts, &dev)?;
        let noise: Vec<Tensor> = chunk
            .iter()
            .map(|(_, s)| SeededRng::new(*s).normal((1, 3, size, size), 0.0, 1.0, DType::F32, &dev))
            .collect::<Result<_, _>>()?;
        let mut x = Tensor::cat(&noise, 0)?;
        let mut step_rng = SeededRng::new(chunk[0].1 ^ 0x5a17);
        x = on_cores(threads, || {
            for &t in ddim.timesteps() {
                let ts = vec![t; chunk.len()];
                let eps = prompts.guided_eps(unet, &x, &ts, p.cfg)?;
                let z = step_rng.normal(x.shape(), 0.0, 1.0, DType::F32, &dev)?;
                x = ddim.step(&eps, &ts, &x, Some(&z))?.0;
            }
            Ok(x)
        })?;
        images.extend(tensor_to_images(&x)?);
        pb.inc(chunk.len() as u64);
    }
    Ok(images)
}

/// The seed of image `k` of prompt `i` in a run with seed `seed` (recorded per image).
fn image_seed(seed: u64, i: usize, k: usize) -> u64 {
    let mut z = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ ((i as u64) << 20) ^ k as u64;
    z = (z ^ (z >> 31)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    (z ^ (z >> 29)) & 0x7fff_ffff_ffff_ffff
}

/// Up to `cols × rows` images tiled with a 2-pixel white border.
pub fn grid(images: &[RgbImage], cols: usize, rows: usize) -> RgbImage {
    let Some(first) = images.first() else {
        return RgbImage::new(1, 1);
    };
    let (w, h) = first.dimensions();
    let n = images.len().min(cols * rows);
    let (c, r) = (cols.min(n) as u32, n.div_ceil(cols) as u32);
    let mut out = RgbImage::from_pixel(
        c * (w + 2) + 2,
        r * (h + 2) + 2,
        image::Rgb([255, 255, 255]),
    );
    for (k, im) in images.iter().take(n).enumerate() {
        let (x0, y0) = ((k as u32 % c) * (w + 2) + 2, (k as u32 / c) * (h + 2) + 2);
        image::imageops::overlay(&mut out, im, x0 as i64, y0 as i64);
    }
    out
}
