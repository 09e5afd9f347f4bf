//! Pretrained in-world weights compiled into the binary: the text encoder and the base model
//! the default pipeline starts from, as the paper starts from SD-1.5's released weights.
//!
//! They were made by `spo-pipe run pretrain` (a long `base-pretrain` budget no 10-minute run
//! can afford): the text encoder and two bases, SD-1.5's analogue and a wider one standing in
//! for SDXL (Table 1), both trained on that text encoder. They are committed under
//! `stages/assets/pretrained/` with the manifests of the cells that made them
//! (`scripts/embed-pretrained.sh`). A stage with `weights = "embedded"` writes
//! these bytes instead of training, after checking that it would have trained exactly them:
//! its params are the recipe's, its world has the same objects and training prompts, and (for
//! the base) its text encoder is the one the base was trained with. Anything else is an error
//! that says which, so a key never names weights that its inputs did not make.

use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use spo_core::{Input, Manifest, Params, StageContext, StageError};

spo_core::param_choice! {
    /// Where a pretraining stage's weights come from: its own training, or the binary.
    pub enum Weights { Train = "train", Embedded = "embedded" }
}

/// The world files that fix what a model was trained on: the object list and the prompts.
const WORLD_FILES: [&str; 2] = ["objects.parquet", "prompts_train.parquet"];

/// One embedded model: its files and the manifests of the cells that made it and its world.
pub struct Embedded {
    /// The kind whose `weights = "embedded"` writes it.
    pub kind: &'static str,
    pub files: &'static [(&'static str, &'static [u8])],
    pub manifest: &'static str,
    pub world_manifest: &'static str,
}

macro_rules! asset {
    ($dir:literal, $file:literal) => {
        (
            $file,
            include_bytes!(concat!("../assets/pretrained/", $dir, "/", $file)) as &[u8],
        )
    };
}

/// The text encoder: a `clip-pretrain` cell (the base model's CLIP, as SD-1.5's is OpenAI's).
pub const TEXT_ENCODER: Embedded = Embedded {
    kind: "clip-pretrain",
    files: &[
        asset!("text-encoder", "clip.safetensors"),
        asset!("text-encoder", "clip_config.json"),
        asset!("text-encoder", "vocab.json"),
    ],
    manifest: include_str!("../assets/pretrained/text-encoder/manifest.json"),
    world_manifest: include_str!("../assets/pretrained/world.json"),
};

macro_rules! base {
    ($dir:literal) => {
        Embedded {
            kind: "base-pretrain",
            files: &[
                asset!($dir, "unet.safetensors"),
                asset!($dir, "unet_config.json"),
            ],
            manifest: include_str!(concat!("../assets/pretrained/", $dir, "/manifest.json")),
            world_manifest: include_str!("../assets/pretrained/world.json"),
        }
    };
}

/// The base models, each a `base-pretrain` cell trained on [`TEXT_ENCODER`]: SD-1.5's analogue
/// (Table 2 and the ablations) and a wider one standing in for SDXL (Table 1). A cell with
/// `weights = "embedded"` gets the one whose recipe its params are.
pub const BASES: [Embedded; 2] = [base!("base"), base!("base-xl")];

fn parse(text: &str, what: &str) -> Result<Manifest> {
    Ok(serde_json::from_str(text).map_err(|e| {
        StageError::Failed(format!("the embedded {what} manifest does not parse: {e}"))
    })?)
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Params without `weights`: what the recipe and the cell must agree on.
fn recipe_params(p: &Params) -> Params {
    let mut p = p.clone();
    p.0.remove("weights");
    p
}

fn file_digest<'a>(m: &'a Manifest, rel: &str) -> Option<&'a str> {
    m.files
        .iter()
        .find(|f| f.path == rel)
        .map(|f| f.sha256.as_str())
}

impl Embedded {
    /// The manifest of the cell that made these weights.
    pub fn recipe(&self) -> Result<Manifest> {
        parse(self.manifest, self.kind)
    }

    /// The recipe's params that this cell's `params` do not match, as `key = value` (a key the
    /// recipe lacks as `no key`); empty when they are the recipe's.
    fn param_differences(&self, params: &Params) -> Result<Vec<String>> {
        let recipe = self.recipe()?;
        let (want, have) = (recipe_params(&recipe.params), recipe_params(params));
        Ok(want
            .0
            .iter()
            .filter(|(k, v)| have.0.get(k) != Some(*v))
            .map(|(k, v)| format!("{k} = {v}"))
            .chain(
                have.0
                    .keys()
                    .filter(|k| !want.0.contains_key(k))
                    .map(|k| format!("no `{k}`")),
            )
            .collect())
    }

    /// Of `models`, the one whose recipe `params` are; otherwise an error naming, for the
    /// recipes they differ from least, the params that differ.
    pub fn matching<'a>(
        models: &'a [Embedded],
        stage: &str,
        params: &Params,
    ) -> Result<&'a Embedded> {
        let mut nearest: Vec<(&Embedded, Vec<String>)> = Vec::new();
        for m in models {
            let differ = m.param_differences(params)?;
            if differ.is_empty() {
                return Ok(m);
            }
            match nearest.first().map(|(_, d)| d.len()) {
                Some(n) if differ.len() > n => {}
                Some(n) if differ.len() == n => nearest.push((m, differ)),
                _ => nearest = vec![(m, differ)],
            }
        }
        let mut which = Vec::with_capacity(nearest.len());
        for (m, differ) in &nearest {
            which.push(format!(
                "the weights of `{}` trained with other params: {}",
                m.recipe()?.label,
                differ.join(", ")
            ));
        }
        Err(Error::failed(format!(
            "stage `{stage}`: weights = \"embedded\" holds {}; set weights = \"train\" to train instead",
            which.join(", and ")
        )))
    }

    /// Checks that this cell would have trained exactly the embedded weights, then writes them.
    /// `text_encoder`: for the base, its `clip-pretrain` input.
    pub fn write(
        &self,
        cx: &mut StageContext,
        world: &Input,
        text_encoder: Option<&Input>,
    ) -> Result<()> {
        let recipe = self.recipe()?;
        let stage = cx.stage().to_owned();
        let mismatch = |what: String| {
            Error::failed(format!(
                "stage `{stage}`: weights = \"embedded\" holds the weights of `{}` trained with {what}; set weights = \"train\" to train instead",
                recipe.label
            ))
        };
        Embedded::matching(std::slice::from_ref(self), &stage, cx.params())?;
        let world_recipe = parse(self.world_manifest, "world")?;
        for rel in WORLD_FILES {
            let have = file_digest(&world.manifest, rel);
            if have != file_digest(&world_recipe, rel) {
                return Err(mismatch(format!(
                    "another world: its `{rel}` differs from that of `{}` (world params {:?})",
                    world.stage, world_recipe.params
                )));
            }
        }
        if let Some(te) = text_encoder {
            let trained_with = parse(TEXT_ENCODER.manifest, "text encoder")?;
            let rel = "clip.safetensors";
            if file_digest(&te.manifest, rel) != file_digest(&trained_with, rel) {
                return Err(mismatch(format!(
                    "another text encoder than `{}` (give it weights = \"embedded\" too)",
                    te.stage
                )));
            }
        }
        for (rel, bytes) in self.files {
            if Some(sha256_hex(bytes).as_str()) != file_digest(&recipe, rel) {
                return Err(StageError::Failed(format!(
                    "the embedded `{rel}` of {} does not match its manifest's digest: the binary is damaged",
                    self.kind
                )).into());
            }
            cx.write_artifact(rel, bytes)?;
        }
        for (name, value) in &recipe.metrics {
            cx.metric(name, *value);
        }
        cx.metric("embedded", 1.0);
        Ok(())
    }
}
