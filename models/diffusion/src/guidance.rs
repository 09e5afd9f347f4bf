//! Classifier-free guidance around one UNet call.
//!
//! The unconditional and conditional branches run as one batch `[uncond; cond]` (as diffusers'
//! pipelines do) and are combined as ε = ε_u + w·(ε_c − ε_u). SPO applies it (w = 5) both when
//! sampling and in the training forward, for the policy and the reference.

use candle_core::Tensor;
use spo_nn::checkpoint::{Direct, Segments};

use crate::ddim::classifier_free_guidance;
use crate::error::{Result, into_candle};
use crate::unet::{AddedConditioning, UNet2DConditionModel};

/// Text conditioning of a guided UNet call.
#[derive(Debug, Clone)]
pub struct GuidanceInputs<'a> {
    /// Prompt states `(b, m, d)`.
    pub cond: &'a Tensor,
    /// Unconditional states `(b, m, d)` (SD 1.5: the encoding of ""; SDXL: zeros).
    pub uncond: &'a Tensor,
    /// SDXL added conditioning for the prompt branch.
    pub added_cond: Option<&'a AddedConditioning>,
    /// SDXL added conditioning for the unconditional branch.
    pub added_uncond: Option<&'a AddedConditioning>,
    /// Guidance scale w (SPO: 5); 1 is the plain conditional prediction.
    pub scale: f64,
}

/// ε̂ with classifier-free guidance for `sample: (b, c, h, w)` at per-sample `timesteps`.
pub fn guided_prediction(
    unet: &UNet2DConditionModel,
    sample: &Tensor,
    timesteps: &[usize],
    inputs: &GuidanceInputs,
) -> Result<Tensor> {
    guided_prediction_with(unet, &mut Direct, sample, timesteps, inputs)
}

/// [`guided_prediction`] as segments of `segs` (see [`UNet2DConditionModel::forward_with`]),
/// the guidance's combination a segment of its own.
pub fn guided_prediction_with<'a>(
    unet: &'a UNet2DConditionModel,
    segs: &mut impl Segments<'a>,
    sample: &Tensor,
    timesteps: &[usize],
    inputs: &GuidanceInputs,
) -> Result<Tensor> {
    let (b, scale) = (sample.dim(0)?, inputs.scale);
    let t: Vec<u32> = timesteps.iter().map(|&t| t as u32).collect();
    let t = Tensor::new(t.as_slice(), sample.device())?;
    let eps = if scale == 1.0 {
        unet.forward_with(segs, sample, &t, inputs.cond, inputs.added_cond)?
    } else {
        // (2b, …): unconditional first, as diffusers' pipelines order them
        let added = match (inputs.added_uncond, inputs.added_cond) {
            (Some(u), Some(c)) => Some(AddedConditioning {
                text_embeds: Tensor::cat(&[&u.text_embeds, &c.text_embeds], 0)?,
                time_ids: Tensor::cat(&[&u.time_ids, &c.time_ids], 0)?,
            }),
            _ => None,
        };
        let samples = Tensor::cat(&[sample, sample], 0)?;
        let ts = Tensor::cat(&[&t, &t], 0)?;
        let context = Tensor::cat(&[inputs.uncond, inputs.cond], 0)?;
        unet.forward_with(segs, &samples, &ts, &context, added.as_ref())?
    };
    Ok(segs.run_one(&[eps], move |xs| {
        combine(&xs[0], b, scale).map_err(into_candle)
    })?)
}

/// ε_u + w·(ε_c − ε_u) from `(2b, …)` rows `[ε_u; ε_c]`; the rows themselves at w = 1.
fn combine(eps: &Tensor, b: usize, scale: f64) -> Result<Tensor> {
    if scale == 1.0 {
        return Ok(eps.clone());
    }
    classifier_free_guidance(&eps.narrow(0, 0, b)?, &eps.narrow(0, b, b)?, scale)
}
