//! The world's oracles as a step-aware judge: each candidate's image (its x₀-prediction, or
//! itself when clean) scored by the annotator's utility without its noise, alignment weight ×
//! alignment plus detail weight × graded detail, from what the oracles parse against the
//! prompted scene (`spo`'s `judge = "oracle"`: what a perfectly trained SPM would learn from
//! the world's labels), or by the graded detail alone (`judge = "oracle-detail"`).

use std::collections::BTreeMap;

use candle_core::Tensor;
use spo_methods::spo::StepJudge;
use spo_world::{Annotator, Scene};

use crate::tensors::tensor_to_images;
use crate::worlddata::WorldData;

/// The noiseless annotator (or its detail term) over a world's training prompts.
pub struct OracleJudge<'a> {
    world: &'a WorldData,
    scenes: BTreeMap<&'a str, &'a Scene>,
    /// The weights of alignment and detail (the annotator's noise is not used).
    annotator: Annotator,
    /// Score per unit of utility.
    scale: f64,
}

impl<'a> OracleJudge<'a> {
    /// The annotator's utility, times `scale`.
    pub fn utility(world: &'a WorldData, annotator: Annotator, scale: f64) -> Self {
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

    /// The graded detail alone, times `scale`.
    pub fn detail(world: &'a WorldData, scale: f64) -> Self {
        let detail_only = Annotator {
            alignment_weight: 0.0,
            detail_weight: 1.0,
            ..Annotator::default()
        };
        Self::utility(world, detail_only, scale)
    }
}

impl StepJudge for OracleJudge<'_> {
    fn scores(&self, x0: &Tensor, texts: &[&str], _t: usize) -> candle_core::Result<Vec<f64>> {
        // 8-bit images clamp as [−1, 1] pixels would.
        let images = tensor_to_images(x0).map_err(candle_core::Error::wrap)?;
        images
            .iter()
            .zip(texts)
            .map(|(image, text)| {
                let scene = self.scenes.get(text).ok_or_else(|| {
                    candle_core::Error::Msg(format!("the oracle judge has no scene for `{text}`"))
                })?;
                let j = spo_world::judge(&self.world.atlas, scene, image)
                    .map_err(candle_core::Error::wrap)?;
                let utility = self
                    .annotator
                    .noiseless(j.alignment.score(), j.detail.quality);
                Ok(self.scale * utility)
            })
            .collect()
    }
}
