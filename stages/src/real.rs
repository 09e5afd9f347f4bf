//! Loading the real-weights inputs the stages share (the in-world counterpart is
//! `crate::inworld`): the diffusers pipeline among a cell's inputs, the prompts of a `prompts`
//! cell, and the pipeline with a trainable LoRA and its optimizer.

use std::path::Path;

use candle_core::DType;
use candle_nn::VarMap;
use spo_core::{Input, StageContext, StageError};
use spo_diffusion::LoraConfig;
use spo_nn::{AdamW, AdamWConfig, named_vars};
use spo_sd::StableDiffusion;

use crate::error::Result;
use crate::inworld::device;
use crate::world_parquet::str_at;
use crate::worlddata::each_row;

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

/// The pipeline in `dir` with SPO's LoRA of `rank` (drawn from `seed`) and an AdamW over the
/// adapters — `crate::inworld::lora_policy`'s twin for real weights.
pub fn lora_pipeline(
    dir: &Path,
    rank: usize,
    seed: u64,
    lr: f64,
    weight_decay: f64,
) -> Result<(StableDiffusion, VarMap, AdamW)> {
    let mut sd = StableDiffusion::open(dir, DType::F32, &device())?;
    let lora_vars = VarMap::new();
    sd.add_trainable_lora(&LoraConfig::spo(rank), &lora_vars, seed)?;
    let opt = AdamW::new(
        named_vars(&lora_vars)?,
        AdamWConfig {
            lr,
            weight_decay,
            ..Default::default()
        },
    )?;
    Ok((sd, lora_vars, opt))
}
