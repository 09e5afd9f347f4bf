//! Classifier-free guidance around one UNet call.
//!
//! The unconditional and conditional branches run as one batch `[uncond; cond]` (as diffusers'
//! pipelines do) and are combined as ε = ε_u + w·(ε_c − ε_u). SPO applies it (w = 5) both when
//! sampling and in the training forward, for the policy and the reference.

use candle_core::Tensor;

use crate::ddim::classifier_free_guidance;
use crate::error::Result;
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
    let b = sample.dim(0)?;
    let t: Vec<u32> = timesteps.iter().map(|&t| t as u32).collect();
    let t = Tensor::new(t.as_slice(), sample.device())?;
    if inputs.scale == 1.0 {
        return unet.forward(sample, &t, inputs.cond, inputs.added_cond);
    }
    // (2b, …): unconditional first, as diffusers' pipelines order them
    let samples = Tensor::cat(&[sample, sample], 0)?;
    let ts = Tensor::cat(&[&t, &t], 0)?;
    let context = Tensor::cat(&[inputs.uncond, inputs.cond], 0)?;
    let added = match (inputs.added_uncond, inputs.added_cond) {
        (Some(u), Some(c)) => Some(AddedConditioning {
            text_embeds: Tensor::cat(&[&u.text_embeds, &c.text_embeds], 0)?,
            time_ids: Tensor::cat(&[&u.time_ids, &c.time_ids], 0)?,
        }),
        _ => None,
    };
    let eps = unet.forward(&samples, &ts, &context, added.as_ref())?;
    classifier_free_guidance(&eps.narrow(0, 0, b)?, &eps.narrow(0, b, b)?, inputs.scale)
}
