//! Diffusion-DPO's loss (next-wave A.1; SalesforceAIResearch/DiffusionDPO `train.py`): on a pair
//! noised with a shared t and ε, the winner's denoising error must fall relative to the frozen
//! reference's more than the loser's does.

use candle_core::{Result, Tensor};

/// The loss and its implicit accuracy.
#[derive(Debug)]
pub struct DpoLoss {
    /// `−mean log σ(−½·β·((e_θ^w − e_θ^l) − (e_ref^w − e_ref^l)))`.
    pub loss: Tensor,
    /// The share of pairs whose inner term is positive.
    pub implicit_accuracy: f64,
}

/// Diffusion-DPO's loss from the per-sample mean squared errors `(c,)` of the policy and the
/// reference on the winners and the losers; `beta` is 5000 in the reference launchers.
pub fn loss(
    model_win: &Tensor,
    model_lose: &Tensor,
    ref_win: &Tensor,
    ref_lose: &Tensor,
    beta: f64,
) -> Result<DpoLoss> {
    let model_diff = (model_win - model_lose)?;
    let ref_diff = (ref_win - ref_lose)?;
    let inside = (model_diff - ref_diff)?.affine(-0.5 * beta, 0.0)?;
    let loss = crate::log_sigmoid(&inside)?.neg()?.mean_all()?;
    let positive = inside
        .gt(0.0)?
        .to_dtype(candle_core::DType::F64)?
        .mean_all()?
        .to_scalar::<f64>()?;
    Ok(DpoLoss {
        loss,
        implicit_accuracy: positive,
    })
}
