//! Loading the real-weights inputs the stages share (the in-world counterpart is
//! `crate::inworld`): the diffusers pipeline among a cell's inputs, the prompts of a `prompts`
//! cell, and the pipeline with a trainable LoRA and its optimizer.

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::VarMap;
use spo_core::{Input, StageContext, StageError};
use spo_diffusion::DiffusersFolder;
use spo_diffusion::LoraConfig;
use spo_nn::AdamW;
use spo_sd::memory::{MemoryNeed, PipelineShape, human_bytes};
use spo_sd::{StableDiffusion, Workload};

use crate::device::{device, device_name, memory_available};
use crate::error::Result;
use crate::inworld::adapter_optimizer;
use crate::world_parquet::str_at;
use crate::worlddata::each_row;

spo_core::param_choice! {
    /// The `precision` param: the dtype of a real pipeline's frozen weights (UNet, text
    /// encoders, VAE unless it must be upcast); the LoRA and its optimizer state stay f32, as
    /// the SPO code runs them (fp16 weights, f32 adapters).
    pub enum Precision { F32 = "f32", F16 = "f16", Bf16 = "bf16" }
}

impl Precision {
    /// The dtype on `dev`. bf16 on the CPU is refused: candle's CPU matmul has none.
    pub fn dtype(self, dev: &Device) -> Result<DType> {
        match self {
            Precision::F32 => Ok(DType::F32),
            Precision::F16 => Ok(DType::F16),
            Precision::Bf16 if dev.is_cpu() => Err(StageError::param(
                "precision",
                "bf16 needs a CUDA device (candle's CPU matmul has no bf16); on the CPU use f16 or f32",
            )
            .into()),
            Precision::Bf16 => Ok(DType::BF16),
        }
    }
}

/// Whether one of the cell's inputs is a diffusers pipeline (holds `model_index.json`): the
/// kinds that also run in the world take real weights when given one.
pub fn has_pipeline(cx: &StageContext) -> bool {
    cx.inputs()
        .iter()
        .any(|i| i.file("model_index.json").is_ok())
}

/// The one input that is a diffusers pipeline folder (it holds `model_index.json`).
pub fn pipeline_input(cx: &StageContext) -> Result<&Input> {
    let stage = cx.stage();
    let mut folders = cx
        .inputs()
        .iter()
        .filter(|i| i.file("model_index.json").is_ok());
    match (folders.next(), folders.next()) {
        (Some(one), None) => Ok(one),
        (Some(a), Some(b)) => Err(StageError::Input {
            need: a.stage.clone(),
            message: format!(
                "ambiguous: both `{}` and `{}` are diffusers pipelines; `{stage}` takes one",
                a.stage, b.stage
            ),
        }
        .into()),
        (None, _) => Err(StageError::Input {
            need: "hub".into(),
            message: format!(
                "stage `{stage}` needs a diffusers pipeline: a `hub` stage whose files include model_index.json"
            ),
        }
        .into()),
    }
}

/// The first input besides `pipeline` and the prompts that holds `file`: where a stage finds a
/// model's weights (the SPM's checkpoint, PickScore's folder).
pub fn weights_input<'a>(cx: &'a StageContext, pipeline: &Input, file: &str) -> Option<&'a Input> {
    cx.inputs()
        .iter()
        .filter(|i| i.dir != pipeline.dir && i.kind != "prompts")
        .find(|i| i.file(file).is_ok())
}

/// The `prompt` column of a `prompts.parquet`, in order.
fn read_prompt_texts(path: &Path) -> Result<Vec<String>> {
    let mut prompts = Vec::new();
    each_row(path, &["prompt"], |c, i| {
        let text = str_at(c[0], i).ok_or_else(|| {
            StageError::Failed(format!(
                "{}: row {i}: column `prompt` is null or not text",
                path.display()
            ))
        })?;
        prompts.push(text.to_owned());
        Ok(())
    })?;
    Ok(prompts)
}

/// The prompts of the cell's `prompts` input; none is an error naming the file.
pub fn prompts(cx: &StageContext) -> Result<Vec<String>> {
    let path = cx.input_of_kind("prompts")?.file("prompts.parquet")?;
    let prompts = read_prompt_texts(&path)?;
    if prompts.is_empty() {
        return Err(StageError::Failed(format!("{}: no prompts", path.display())).into());
    }
    Ok(prompts)
}

/// The pipeline in `dir`, its frozen weights as `dtype`, with SPO's LoRA of `rank` (f32, drawn
/// from `seed`) and an AdamW over the adapters — `crate::inworld::lora_policy`'s twin for real
/// weights.
pub fn lora_pipeline(
    dir: &Path,
    dtype: DType,
    rank: usize,
    seed: u64,
    lr: f64,
    weight_decay: f64,
) -> Result<(StableDiffusion, VarMap, AdamW)> {
    let mut sd = StableDiffusion::open(dir, dtype, &device())?;
    let lora_vars = VarMap::new();
    sd.add_trainable_lora(&LoraConfig::spo(rank), &lora_vars, seed)?;
    let opt = adapter_optimizer(&lora_vars, lr, weight_decay)?;
    Ok((sd, lora_vars, opt))
}

/// Bytes of a model folder's weight files (`*.safetensors`, else `*.bin`): what the model
/// takes in memory at the precision it was saved in.
pub fn weight_file_bytes(dir: &Path) -> Result<u64> {
    let entries = std::fs::read_dir(dir).map_err(|e| StageError::io(dir, e))?;
    let (mut safetensors, mut bin) = (0u64, 0u64);
    for entry in entries {
        let entry = entry.map_err(|e| StageError::io(dir, e))?;
        let path = entry.path();
        let len = entry
            .metadata()
            .map_err(|e| StageError::io(&path, e))?
            .len();
        match path.extension().and_then(|e| e.to_str()) {
            Some("safetensors") => safetensors += len,
            Some("bin") => bin += len,
            _ => {}
        }
    }
    Ok(if safetensors > 0 { safetensors } else { bin })
}

/// Estimates what `work` on the pipeline `folder` (weights as `dtype`, plus `extra_weights`
/// bytes of other models the cell loads) needs on the compute device, records it as the
/// cell's `memory_estimate_gib`, and refuses the cell — before any weight is loaded — when it
/// exceeds what the device can give (`--device-memory`, else its free memory). Where that
/// cannot be told, the cell runs and the log says so.
pub fn check_memory(
    cx: &mut StageContext,
    folder: &DiffusersFolder,
    dtype: DType,
    work: Workload,
    extra_weights: u64,
) -> Result<()> {
    let mut need = PipelineShape::of_folder(folder)?.estimate(dtype, work)?;
    need.weights += extra_weights;
    check_need(
        cx,
        &need,
        "lower the batch params, set gradient_checkpointing = true (training kinds), use precision f16 or bf16, or give it a larger device",
    )
}

/// Records `need` as the cell's `memory_estimate_gib` and refuses the cell when it exceeds what
/// the device can give (`--device-memory`, else its free memory), saying what to do (`advice`).
/// Where that cannot be told, the cell runs and the log says so.
pub fn check_need(cx: &mut StageContext, need: &MemoryNeed, advice: &str) -> Result<()> {
    let total = need.total();
    cx.metric("memory_estimate_gib", total as f64 / (1u64 << 30) as f64);
    let dev = device();
    let Some((available, source)) = memory_available(&dev) else {
        tracing::warn!(
            "{}: needs about {} on {}; how much the device has free cannot be told, so the cell runs unchecked",
            cx.stage(),
            human_bytes(total),
            device_name(&dev)
        );
        return Ok(());
    };
    if total <= available {
        return Ok(());
    }
    Err(StageError::Failed(format!(
        "stage `{}` needs about {} on {} (weights {}, training state {}, activations {}) but {} are available ({source}); {advice}",
        cx.stage(),
        human_bytes(total),
        device_name(&dev),
        human_bytes(need.weights),
        human_bytes(need.training_state),
        human_bytes(need.activations),
        human_bytes(available),
    ))
    .into())
}
