//! MaPO's reference-free loss (next-wave A.4; mapo-t2i/mapo `utils.py` `compute_loss`): the
//! winner's denoising loss plus a margin between the winner's and the loser's log-odds
//! `ψ(ℓ) = sℓ / (e^{sℓ} − 1)`, scaled by the number of training timesteps.

use candle_core::{Result, Tensor};

/// MaPO's settings: β = `beta_mapo` 0.1, s = `snr_value` 0.5, T = 1000 training timesteps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mapo {
    pub beta: f64,
    pub snr_value: f64,
    pub train_timesteps: f64,
}

impl Default for Mapo {
    fn default() -> Self {
        Mapo {
            beta: 0.1,
            snr_value: 0.5,
            train_timesteps: 1000.0,
        }
    }
}

impl Mapo {
    /// `mean(ℓ_w) − β·mean log σ(T·(ψ(ℓ_w) − ψ(ℓ_l)))` from the per-sample mean squared errors
    /// `(c,)` of the winners and the losers.
    pub fn loss(&self, loss_win: &Tensor, loss_lose: &Tensor) -> Result<Tensor> {
        let psi = |l: &Tensor| -> Result<Tensor> {
            let sl = l.affine(self.snr_value, 0.0)?;
            sl.div(&sl.exp()?.affine(1.0, -1.0)?)
        };
        let log_odds = (psi(loss_win)? - psi(loss_lose)?)?;
        let ratio = crate::log_sigmoid(&log_odds.affine(self.train_timesteps, 0.0)?)?;
        loss_win.mean_all()? - ratio.mean_all()?.affine(self.beta, 0.0)?
    }
}
