//! GradSPO's noise target (next-wave B; JoshuaTTJ/GradSPO): instead of the transition's
//! log-probability, the policy is scored by `−MSE(ε_θ, ε*)` against a target that moves the
//! rollout (EMA) policy's prediction toward the winner's sampling noise and away from the
//! loser's: `ε* = ε_ema − s·√(1 − ᾱ_t)·n`, `n_w = (z_max − z_min)/2`, `n_l = −n_w`.

use candle_core::{Result, Tensor};

/// The targets `(ε*_w, ε*_l)` from the EMA policy's prediction `eps_ema`, the sampling noises
/// of the pool's best and worst candidates, `√(1 − ᾱ_t)` per row (`(n,)`), and the scale
/// `s` (`grad_scale`, 0.5 in the reference).
pub fn targets(
    eps_ema: &Tensor,
    z_max: &Tensor,
    z_min: &Tensor,
    sqrt_one_minus_alpha_bar: &Tensor,
    scale: f64,
) -> Result<(Tensor, Tensor)> {
    let n_w = (z_max - z_min)?.affine(0.5, 0.0)?;
    let shape: Vec<usize> = std::iter::once(eps_ema.dim(0)?)
        .chain(std::iter::repeat_n(1, eps_ema.rank() - 1))
        .collect();
    let step = (n_w.broadcast_mul(&sqrt_one_minus_alpha_bar.reshape(shape)?)? * scale)?;
    Ok(((eps_ema - &step)?, (eps_ema + &step)?))
}

/// The score GradSPO uses in place of a log-probability: `−MSE(ε_θ, ε*)` per sample.
pub fn score(eps: &Tensor, target: &Tensor) -> Result<Tensor> {
    crate::per_sample_mse(eps, target)?.neg()
}
