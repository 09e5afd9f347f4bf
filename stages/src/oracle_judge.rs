//! The world's annotator without its noise as a step-aware judge: each candidate's image (its
//! x₀-prediction, or itself when clean) scored by the annotator's utility, alignment weight ×
//! alignment plus detail weight × graded detail, from what the oracles parse against the
//! prompted scene. What a perfectly trained SPM would learn from the world's labels: SPO guided
//! by it bounds what SPO can do in the world (`spo`'s `judge = "oracle"`).

use std::collections::BTreeMap;

use candle_core::Tensor;
use spo_methods::spo::StepJudge;
use spo_world::{Annotator, Scene};

use crate::tensors::tensor_to_images;
use crate::worlddata::WorldData;

/// The noiseless annotator over a world's training prompts.
pub struct OracleJudge<'a> {
    world: &'a WorldData,
    scenes: BTreeMap<&'a str, &'a Scene>,
    annotator: Annotator,
    /// Score per unit of utility.
    scale: f64,
}

impl<'a> OracleJudge<'a> {
    pub fn new(world: &'a WorldData, annotator: Annotator, scale: f64) -> Self {
        let scenes = world
            .train
            .iter()
            .map(|p| (p.text.as_str(), &p.scene))
            .collect();
        OracleJudge {
            world,
            scenes,
            annotator,
            scale,
        }
    }
}

impl StepJudge for OracleJudge<'_> {
    fn scores(&self, pixels: &Tensor, texts: &[&str], _t: usize) -> candle_core::Result<Vec<f64>> {
        let images = tensor_to_images(pixels).map_err(candle_core::Error::wrap)?;
        images
            .iter()
            .zip(texts)
            .map(|(image, text)| {
                let scene = self.scenes.get(text).ok_or_else(|| {
                    candle_core::Error::Msg(format!("the oracle judge has no scene for `{text}`"))
                })?;
                let j = spo_world::judge(&self.world.atlas, scene, image)
                    .map_err(candle_core::Error::wrap)?;
                let a = &self.annotator;
                let utility =
                    a.alignment_weight * j.alignment.score() + a.detail_weight * j.detail.quality;
                Ok(self.scale * utility)
            })
            .collect()
    }
}
