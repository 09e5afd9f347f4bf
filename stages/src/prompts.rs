//! The `prompts` stage kind: normalises a prompt file fetched by a `download` stage into one
//! Parquet prompt table, whatever benchmark it comes from — SPO's 4k training prompts,
//! PartiPrompts, GenEval, ImageReward's benchmark, HPSv2's benchmark, or plain lines.
//!
//! The table (`prompts.parquet`): `index` int64 (position in the source), `prompt` utf8,
//! `category` utf8 or null (Parti category, GenEval tag, HPSv2 style), `metadata` utf8 or null
//! (the rest of the source record, as JSON), `source` utf8 (the format).

use std::path::Path;
use std::sync::Arc;

use arrow_array::{Int64Array, StringArray};
use arrow_schema::{DataType, Field, Schema};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};
use spo_core::{ParamSpec, StageContext, StageError, StageKind};

use crate::error::Result;
use crate::world_parquet::{col, write_table};

spo_core::param_choice! {
    /// The prompt-file formats the kind reads.
    pub enum PromptFormat {
        Spo4k = "spo-4k",
        Parti = "parti",
        Geneval = "geneval",
        ImageReward = "imagereward",
        Hpsv2 = "hpsv2",
        Lines = "lines",
    }
}

spo_core::stage_params! {
    /// The params of `prompts`.
    pub struct PromptsParams {
        /// the file's format
        format: PromptFormat = choice_of(PromptFormat::Lines).required(),
        /// which file of the input (empty: its only file)
        file: String = string(""),
        /// pinned SHA-256 of the file (empty: the input manifest's digest only)
        sha256: String = string(""),
    }
}

/// One normalised prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptRow {
    pub index: i64,
    pub prompt: String,
    pub category: Option<String>,
    pub metadata: Option<String>,
}

/// Parses a prompt file of `format`; `name` is the file's name (HPSv2 styles come from it).
/// The error is a message naming the line or record at fault.
pub fn parse_prompts(
    format: PromptFormat,
    bytes: &[u8],
    name: &str,
) -> Result<Vec<PromptRow>, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8 text: {e}"))?;
    let row =
        |index: usize, prompt: &str, category: Option<&str>, metadata: Option<Json>| PromptRow {
            index: index as i64,
            prompt: prompt.to_owned(),
            category: category.map(str::to_owned),
            metadata: metadata.map(|m| m.to_string()),
        };
    let json = || serde_json::from_str::<Json>(text).map_err(|e| format!("not JSON: {e}"));
    let rows = match format {
        // [{"caption": ..., "trainset_idx": ...}, ...]
        PromptFormat::Spo4k | PromptFormat::ImageReward => {
            let key = if format == PromptFormat::Spo4k {
                "caption"
            } else {
                "prompt"
            };
            let Json::Array(items) = json()? else {
                return Err("expected a JSON array of objects".into());
            };
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| {
                    let Json::Object(mut obj) = item else {
                        return Err(format!("record {i}: not an object"));
                    };
                    let Some(Json::String(p)) = obj.remove(key) else {
                        return Err(format!("record {i}: no string `{key}`"));
                    };
                    Ok(row(
                        i,
                        &p,
                        None,
                        (!obj.is_empty()).then_some(Json::Object(obj)),
                    ))
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        // Prompt \t Category \t Challenge \t Note, with a header line.
        PromptFormat::Parti => {
            let mut lines = text.lines();
            let header: Vec<&str> = lines.next().unwrap_or_default().split('\t').collect();
            if header.first() != Some(&"Prompt") {
                return Err(format!(
                    "line 1: expected a header starting with `Prompt`, found `{}`",
                    header.join("\\t")
                ));
            }
            lines
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(i, l)| {
                    let fields: Vec<&str> = l.split('\t').collect();
                    if fields.len() != header.len() {
                        return Err(format!(
                            "line {}: {} tab-separated fields, the header has {}",
                            i + 2,
                            fields.len(),
                            header.len()
                        ));
                    }
                    let meta: serde_json::Map<String, Json> = header
                        .iter()
                        .zip(&fields)
                        .skip(2)
                        .map(|(h, v)| (h.to_lowercase(), Json::String((*v).to_owned())))
                        .collect();
                    Ok(row(
                        i,
                        fields[0],
                        fields.get(1).copied(),
                        Some(Json::Object(meta)),
                    ))
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        // One JSON object per line: {"tag", "include", "prompt", ...}.
        PromptFormat::Geneval => text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                let v: Json = serde_json::from_str(l)
                    .map_err(|e| format!("line {}: not JSON: {e}", i + 1))?;
                let p = v
                    .get("prompt")
                    .and_then(Json::as_str)
                    .ok_or_else(|| format!("line {}: no string `prompt`", i + 1))?;
                Ok(row(
                    i,
                    p,
                    v.get("tag").and_then(Json::as_str),
                    Some(v.clone()),
                ))
            })
            .collect::<Result<Vec<_>, String>>()?,
        // A JSON list of prompts (one style's file, e.g. anime.json), or {style: [prompts]}.
        PromptFormat::Hpsv2 => {
            let stem = Path::new(name)
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or(name)
                .to_owned();
            let styles: Vec<(String, Json)> = match json()? {
                list @ Json::Array(_) => vec![(stem, list)],
                Json::Object(map) => map.into_iter().collect(),
                _ => {
                    return Err(
                        "expected a JSON list of prompts or an object of style: [prompts]".into(),
                    );
                }
            };
            let mut out = Vec::new();
            for (style, list) in styles {
                let Json::Array(items) = list else {
                    return Err(format!("style `{style}`: not a list"));
                };
                for (i, p) in items.iter().enumerate() {
                    let p = p
                        .as_str()
                        .ok_or_else(|| format!("style `{style}` item {i}: not a string"))?;
                    out.push(row(out.len(), p, Some(&style), None));
                }
            }
            out
        }
        PromptFormat::Lines => text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| row(i, l.trim(), None, None))
            .collect(),
    };
    if rows.is_empty() {
        return Err("holds no prompt".into());
    }
    Ok(rows)
}

/// The prompt table's columns, plus any extra utf8 columns (the world adds `scene`).
pub(crate) fn prompt_schema(extra: &[&str]) -> Arc<Schema> {
    let mut fields = vec![
        Field::new("index", DataType::Int64, false),
        Field::new("prompt", DataType::Utf8, false),
        Field::new("category", DataType::Utf8, true),
        Field::new("metadata", DataType::Utf8, true),
        Field::new("source", DataType::Utf8, false),
    ];
    fields.extend(extra.iter().map(|n| Field::new(*n, DataType::Utf8, false)));
    Arc::new(Schema::new(fields))
}

/// Writes a prompt table with `extra` columns (name, one value per row).
pub(crate) fn write_prompts(
    cx: &mut StageContext,
    rel: &str,
    source: &str,
    rows: &[PromptRow],
    extra: &[(&str, Vec<String>)],
) -> Result<()> {
    let names: Vec<&str> = extra.iter().map(|(n, _)| *n).collect();
    let mut columns = vec![
        col(Int64Array::from_iter_values(rows.iter().map(|r| r.index))),
        col(StringArray::from_iter_values(
            rows.iter().map(|r| r.prompt.as_str()),
        )),
        col(StringArray::from_iter(
            rows.iter().map(|r| r.category.as_deref()),
        )),
        col(StringArray::from_iter(
            rows.iter().map(|r| r.metadata.as_deref()),
        )),
        col(StringArray::from_iter_values(rows.iter().map(|_| source))),
    ];
    columns.extend(
        extra
            .iter()
            .map(|(_, v)| col(StringArray::from_iter_values(v.iter()))),
    );
    write_table(cx, rel, prompt_schema(&names), columns)
}

/// The `prompts` stage kind.
pub struct Prompts;

impl StageKind for Prompts {
    fn name(&self) -> &'static str {
        "prompts"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "Normalise a downloaded prompt file (SPO 4k, PartiPrompts, GenEval, ImageReward, HPSv2, lines) into prompts.parquet"
    }
    fn params(&self) -> Vec<ParamSpec> {
        PromptsParams::specs()
    }
    fn run(&self, cx: &mut StageContext) -> Result<(), StageError> {
        let PromptsParams {
            format,
            file: want,
            sha256,
        } = PromptsParams::from_params(cx.params())?;
        let pinned = sha256.to_lowercase();
        let [input] = cx.inputs() else {
            return Err(StageError::Failed(format!(
                "stage `{}` needs exactly one input holding the prompt file, has {}",
                cx.stage(),
                cx.inputs().len()
            )));
        };
        let entry = if want.is_empty() {
            match input.manifest.files.as_slice() {
                [one] => one,
                files => {
                    return Err(StageError::Input {
                        need: input.stage.clone(),
                        message: format!(
                            "holds {} files; set `file` to one of: {}",
                            files.len(),
                            files
                                .iter()
                                .map(|f| f.path.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    });
                }
            }
        } else {
            input
                .manifest
                .files
                .iter()
                .find(|f| f.path == want)
                .ok_or_else(|| StageError::Input {
                    need: input.stage.clone(),
                    message: format!("has no file `{want}`"),
                })?
        };
        let path = input.file(&entry.path)?;
        let bytes = std::fs::read(&path).map_err(|e| StageError::io(&path, e))?;
        let digest = hex::encode(Sha256::digest(&bytes));
        for (expected, whose) in [
            (entry.sha256.to_lowercase(), "its manifest records"),
            (pinned, "the `sha256` param pins"),
        ] {
            if !expected.is_empty() && digest != expected {
                return Err(StageError::Failed(format!(
                    "prompt file {}: sha256 is {digest}, but {whose} {expected}",
                    path.display()
                )));
            }
        }
        let rows = parse_prompts(format, &bytes, &entry.path).map_err(|m| {
            StageError::Failed(format!("prompt file {} ({format}): {m}", path.display()))
        })?;
        let categories: std::collections::HashSet<&str> =
            rows.iter().filter_map(|r| r.category.as_deref()).collect();
        let n_categories = categories.len();
        write_prompts(cx, "prompts.parquet", format.as_str(), &rows, &[])?;
        cx.metric("prompts", rows.len() as f64);
        cx.metric("categories", n_categories as f64);
        Ok(())
    }
}
