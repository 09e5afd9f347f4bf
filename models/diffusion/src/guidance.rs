//! Classifier-free guidance around one UNet call.
//!
//! The unconditional and conditional branches run as one batch `[uncond; cond]` (as diffusers'
//! pipelines do) and are combined as ε = ε_u + w·(ε_c − ε_u). SPO applies it (w = 5) both when
//! sampling and in the training forward, for the policy and the reference.

use candle_core::Tensor;
use spo_nn::checkpoint::Tape;

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
    let call = GuidedCall::new(sample, timesteps, inputs)?;
    let eps = unet.forward(
        &call.sample,
        &call.timesteps,
        &call.context,
        call.added.as_ref(),
    )?;
    call.combine(&eps)
}

/// [`guided_prediction`] on `tape` (gradient checkpointing: see
/// [`UNet2DConditionModel::forward_on_tape`]), the guidance's combination a segment of its
/// own. Returns ε̂ detached.
pub fn guided_prediction_on_tape<'a>(
    unet: &'a UNet2DConditionModel,
    tape: &mut Tape<'a>,
    sample: &Tensor,
    timesteps: &[usize],
    inputs: &GuidanceInputs,
) -> Result<Tensor> {
    let call = GuidedCall::new(sample, timesteps, inputs)?;
    let eps = unet.forward_on_tape(
        tape,
        &call.sample,
        &call.timesteps,
        &call.context,
        call.added.as_ref(),
    )?;
    let (b, scale) = (sample.dim(0)?, inputs.scale);
    let mut out = tape.run(&[eps], move |xs| {
        Ok(vec![
            GuidedCall::combine_rows(&xs[0], b, scale).map_err(into_candle)?,
        ])
    })?;
    Ok(out.remove(0))
}

/// One UNet call of a guided prediction: `[uncond; cond]` as one batch (or the prompt branch
/// alone at scale 1).
struct GuidedCall {
    sample: Tensor,
    timesteps: Tensor,
    context: Tensor,
    added: Option<AddedConditioning>,
    b: usize,
    scale: f64,
}

impl GuidedCall {
    fn new(sample: &Tensor, timesteps: &[usize], inputs: &GuidanceInputs) -> Result<Self> {
        let b = sample.dim(0)?;
        let t: Vec<u32> = timesteps.iter().map(|&t| t as u32).collect();
        let t = Tensor::new(t.as_slice(), sample.device())?;
        if inputs.scale == 1.0 {
            return Ok(Self {
                sample: sample.clone(),
                timesteps: t,
                context: inputs.cond.clone(),
                added: inputs.added_cond.cloned(),
                b,
                scale: 1.0,
            });
        }
        // (2b, …): unconditional first, as diffusers' pipelines order them
        let added = match (inputs.added_uncond, inputs.added_cond) {
            (Some(u), Some(c)) => Some(AddedConditioning {
                text_embeds: Tensor::cat(&[&u.text_embeds, &c.text_embeds], 0)?,
                time_ids: Tensor::cat(&[&u.time_ids, &c.time_ids], 0)?,
            }),
            _ => None,
        };
        Ok(Self {
            sample: Tensor::cat(&[sample, sample], 0)?,
            timesteps: Tensor::cat(&[&t, &t], 0)?,
            context: Tensor::cat(&[inputs.uncond, inputs.cond], 0)?,
            added,
            b,
            scale: inputs.scale,
        })
    }

    /// ε̂ from the UNet's output of this call.
    fn combine(&self, eps: &Tensor) -> Result<Tensor> {
        Self::combine_rows(eps, self.b, self.scale)
    }

    /// ε_u + w·(ε_c − ε_u) from `(2b, …)` rows `[ε_u; ε_c]`; the rows themselves at w = 1.
    fn combine_rows(eps: &Tensor, b: usize, scale: f64) -> Result<Tensor> {
        if scale == 1.0 {
            return Ok(eps.clone());
        }
        classifier_free_guidance(&eps.narrow(0, 0, b)?, &eps.narrow(0, b, b)?, scale)
    }
}
