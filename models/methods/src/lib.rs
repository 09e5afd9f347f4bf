//! spo-methods: the preference-optimisation methods spo-pipe trains with, as functions of
//! tensors and scores with typed settings, SPO's round over two traits for its models
//! ([`spo::Denoiser`], [`spo::StepJudge`]) and the online methods' rollouts over the first. No I/O, no store: the stage kinds load the models,
//! call these, and write what they return.
//!
//! Each loss follows its reference repository (`../shared/reference/next-wave.md`, part A and
//! B; `spo-reference.md` §2) and is checked against a Python re-implementation of that code on
//! fixed inputs (`tests/fixtures/methods/make_goldens.py`).

pub mod ddpo;
pub mod diffusion_dpo;
pub mod gradspo;
pub mod mapo;
pub mod online;
pub mod pairs;
pub mod ratio;
pub mod spo;
#[cfg(test)]
mod toys;

use candle_core::{Result, Tensor};

/// `log σ(x)`, stable for large |x| (β = 5000 in Diffusion-DPO makes |x| large):
/// `min(x, 0) − log(1 + e^{−|x|})`.
pub fn log_sigmoid(x: &Tensor) -> Result<Tensor> {
    let tail = x.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
    x.clamp(f64::NEG_INFINITY, 0.0)? - tail
}

/// Per-sample mean squared error over every dimension but the first, as the references take
/// it (`F.mse_loss(reduction="none").mean(dim=[1, ..])`).
pub fn per_sample_mse(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let n = a.dim(0)?;
    (a - b)?.sqr()?.reshape((n, ()))?.mean(1)
}
