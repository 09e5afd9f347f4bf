//! `sd-sample`: images from an SD-1.5- or SDXL-shaped diffusers pipeline — a `hub` cell laid out like
//! the repo — for the prompts of a `prompts` cell, with a LoRA when an input holds one (an
//! `sd-spo` cell's `lora.safetensors`, or a released LoRA's `pytorch_lora_weights.safetensors`): DDIM in the VAE's latent space with classifier-free
//! guidance (the paper evaluates at 20 steps, CFG 5), N images per prompt, each from its own
//! recorded seed. Writes `samples.parquet` (prompt_index, prompt, seed, image as
//! PNG bytes) and a `grid.png` of the first images.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{BinaryArray, Int64Array, StringArray};
use arrow_schema::{DataType, Field, Schema};
use candle_core::{DType, Tensor};
use image::RgbImage;
use spo_core::{ParamSpec, StageContext, StageError, StageKind};
use spo_diffusion::DiffusersFolder;
use spo_nn::SeededRng;
use spo_sd::{SampleSettings, StableDiffusion, Workload};

use crate::device::device;
use crate::error::{At, Result};
use crate::inworld::on_cores;
use crate::real::{self, Precision};
use crate::sample::{grid, image_jobs};
use crate::tensors::{png_bytes, unit_tensor_to_images};
use crate::world_parquet::{bytes_at, col, i64_at, str_at, write_table};
use crate::worlddata::each_row;

spo_core::stage_params! {
    /// The params of `sd-sample`.
    pub struct SdSampleParams {
        /// DDIM steps
        steps: usize = int(20).range(1.0, 1000.0),
        /// classifier-free guidance scale
        cfg: f64 = float(5.0).range(1.0, 100.0),
        /// DDIM stochasticity
        eta: f64 = float(0.0).range(0.0, 1.0),
        /// how many prompts (from the start of the table; Pick-a-Pic's validation_unique has 500)
        prompts: usize = int(500).range(1.0, 1e7),
        /// images per prompt
        per_prompt: usize = int(1).range(1.0, 1000.0),
        /// images per UNet call (each runs twice: with and without the prompt)
        batch: usize = int(4).range(1.0, 4096.0),
        /// the weights' dtype (the VAE decodes in f32 unless its config allows half precision)
        precision: Precision = choice_of(Precision::F16),
    }
}

/// The `sd-sample` stage kind.
pub struct SdSample;

impl StageKind for SdSample {
    fn name(&self) -> &'static str {
        "sd-sample"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "DDIM samples of an SD-1.5- or SDXL-shaped diffusers pipeline (needs a hub cell with model_index.json and a prompts cell; optional LoRA)"
    }
    fn params(&self) -> Vec<ParamSpec> {
        SdSampleParams::specs()
    }
    fn seeded(&self) -> bool {
        true
    }
    fn run(&self, cx: &mut StageContext) -> Result<(), StageError> {
        Ok(run(cx)?)
    }
}

/// The names a LoRA file has in an input: spo-pipe's training kinds write `lora.safetensors`;
/// diffusers' `save_lora_weights` (the SPO authors' released LoRAs) `pytorch_lora_weights.safetensors`.
pub const LORA_FILES: [&str; 2] = ["lora.safetensors", "pytorch_lora_weights.safetensors"];

/// The LoRA among the inputs, if one holds one; two are ambiguous.
fn lora_input(cx: &StageContext) -> Result<Option<PathBuf>> {
    let mut found = cx.inputs().iter().filter_map(|i| {
        LORA_FILES
            .iter()
            .find_map(|f| i.file(f).ok().map(|p| (i, p)))
    });
    match (found.next(), found.next()) {
        (Some((a, _)), Some((b, _))) => Err(StageError::Input {
            need: a.stage.clone(),
            message: format!(
                "ambiguous: both `{}` and `{}` hold a LoRA; `{}` samples with one",
                a.stage,
                b.stage,
                cx.stage()
            ),
        }
        .into()),
        (one, _) => Ok(one.map(|(_, p)| p)),
    }
}

/// The `unet/` folder of an input that holds a UNet but no pipeline (a released full fine-tune:
/// Diffusion-DPO's `mhdang/dpo-sd1.5-text2image-v1`, MaPO's `mapo-t2i/mapo-beta`), which
/// replaces the pipeline's; two such inputs are ambiguous.
fn unet_input(cx: &StageContext) -> Result<Option<PathBuf>> {
    let mut found = cx.inputs().iter().filter(|i| {
        i.file("model_index.json").is_err() && i.dir.join("unet").join("config.json").is_file()
    });
    match (found.next(), found.next()) {
        (Some(a), Some(b)) => Err(StageError::Input {
            need: a.stage.clone(),
            message: format!(
                "ambiguous: both `{}` and `{}` hold a UNet; `{}` samples with one",
                a.stage,
                b.stage,
                cx.stage()
            ),
        }
        .into()),
        (one, _) => Ok(one.map(|i| i.dir.join("unet"))),
    }
}

/// One row of an `sd-sample` cell's `samples.parquet`.
pub struct SdSampleRow {
    pub prompt_index: i64,
    pub prompt: String,
    pub seed: i64,
    pub image: RgbImage,
}

/// Reads an `sd-sample` `samples.parquet`; errors name the file, the row and the column.
pub fn read_sd_samples(path: &Path) -> Result<Vec<SdSampleRow>> {
    let names = ["prompt_index", "prompt", "seed", "image"];
    let mut rows = Vec::new();
    each_row(path, &names, |c, i| {
        let bad = |k: usize, why: String| {
            StageError::Failed(format!(
                "{}: row {i}: column `{}` {why}",
                path.display(),
                names[k]
            ))
        };
        let missing = |k: usize| bad(k, "is null or of the wrong type".into());
        let png = bytes_at(c[3], i).ok_or_else(|| missing(3))?;
        let image = image::load_from_memory(png)
            .map_err(|e| bad(3, format!("is not an image: {e}")))?
            .to_rgb8();
        rows.push(SdSampleRow {
            prompt_index: i64_at(c[0], i).ok_or_else(|| missing(0))?,
            prompt: str_at(c[1], i).ok_or_else(|| missing(1))?.to_owned(),
            seed: i64_at(c[2], i).ok_or_else(|| missing(2))?,
            image,
        });
        Ok(())
    })?;
    Ok(rows)
}

fn run(cx: &mut StageContext) -> Result<()> {
    let p = SdSampleParams::from_params(cx.params())?;
    let dev = device();
    let model = real::pipeline_input(cx)?.dir.clone();
    let mut prompts = real::prompts(cx)?;
    prompts.truncate(p.prompts);
    let dtype = p.precision.dtype(&dev)?;
    let mut folder = DiffusersFolder::open(&model)?;
    if let Some(unet) = unet_input(cx)? {
        folder = folder.with_unet(&unet);
    }
    real::check_memory(cx, &folder, dtype, Workload::Sample { batch: p.batch }, 0)?;
    let mut sd = StableDiffusion::open_folder(&folder, dtype, &dev)?;
    if let Some(lora) = lora_input(cx)? {
        sd.unet_mut().load_lora(&lora).at(&lora)?;
    }
    let seed = cx.seed().unwrap_or(0);
    let jobs = image_jobs(seed, prompts.len(), p.per_prompt);
    let settings = SampleSettings {
        steps: p.steps,
        cfg: p.cfg,
        eta: p.eta,
    };
    let [c, h, w] = sd.latent_shape();
    let pb = cx.progress(jobs.len() as u64, "sd-sample");
    let mut images: Vec<RgbImage> = Vec::with_capacity(jobs.len());
    for chunk in jobs.chunks(p.batch) {
        let texts: Vec<&str> = chunk.iter().map(|(i, _)| prompts[*i].as_str()).collect();
        let batch = on_cores(cx.threads(), || {
            let noise: Vec<Tensor> = chunk
                .iter()
                .map(|(_, s)| SeededRng::new(*s).normal((1, c, h, w), 0.0, 1.0, DType::F32, &dev))
                .collect::<Result<_, _>>()?;
            let cond = sd.conditioning(&texts)?;
            let mut step_rng = SeededRng::new(chunk[0].1 ^ 0x5a17);
            let latents = sd.denoise(&cond, &Tensor::cat(&noise, 0)?, &settings, &mut step_rng)?;
            Ok(sd.decode(&latents)?)
        })
        .at(&model)?;
        images.extend(unit_tensor_to_images(&batch)?);
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();

    let schema = Arc::new(Schema::new(vec![
        Field::new("prompt_index", DataType::Int64, false),
        Field::new("prompt", DataType::Utf8, false),
        Field::new("seed", DataType::Int64, false),
        Field::new("image", DataType::Binary, false),
    ]));
    let pngs: Vec<Vec<u8>> = images.iter().map(png_bytes).collect::<Result<_, _>>()?;
    let cols = vec![
        col(Int64Array::from_iter_values(
            jobs.iter().map(|(i, _)| *i as i64),
        )),
        col(StringArray::from_iter_values(
            jobs.iter().map(|(i, _)| &prompts[*i]),
        )),
        col(Int64Array::from_iter_values(
            jobs.iter().map(|(_, s)| *s as i64),
        )),
        col(BinaryArray::from_iter_values(pngs.iter())),
    ];
    write_table(cx, "samples.parquet", schema, cols)?;
    cx.write_artifact("grid.png", &png_bytes(&grid(&images, 8, 8))?)?;
    cx.metric("images", images.len() as f64);
    Ok(())
}
