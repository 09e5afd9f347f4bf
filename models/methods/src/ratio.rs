//! The clamped-ratio preference loss of SPO (spo-reference §2) and D3PO (next-wave A.2):
//! `r = clamp(p_θ(x_{t−1} | x_t) / p_ref(x_{t−1} | x_t), 1 − ε, 1 + ε)` per transition, and
//! `L = −log σ(β·h_a·log r_a + β·h_b·log r_b)` per pair. SPO's pairs are always ordered
//! (h = +1 for the winner, −1 for the loser); D3PO's labels may tie (h = 0, 0: no gradient).

use candle_core::{Result, Tensor};

/// The loss's settings: SPO's β = 10, ε = 0.1; D3PO's β = 0.1, ε = 0.1 (its reward ranks the
/// same form with a smaller β).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClampedRatio {
    pub beta: f64,
    pub clip_eps: f64,
}

/// A batch's loss and the clamped ratios it was computed from (for the round logs).
#[derive(Debug)]
pub struct RatioLoss {
    /// The mean loss over the pairs.
    pub loss: Tensor,
    /// `(c,)` clamped ratios of the winners (first of each pair).
    pub ratio_win: Tensor,
    /// `(c,)` clamped ratios of the losers (second of each pair).
    pub ratio_lose: Tensor,
}

impl ClampedRatio {
    /// The clamped ratios `clamp(exp(logp − logp_ref), 1 − ε, 1 + ε)`.
    pub fn ratios(&self, logp: &Tensor, logp_ref: &Tensor) -> Result<Tensor> {
        (logp - logp_ref)?
            .exp()?
            .clamp(1.0 - self.clip_eps, 1.0 + self.clip_eps)
    }

    /// SPO's loss over `c` ordered pairs. `logp` and `logp_ref` are `(2c,)`: the policy's and
    /// the frozen reference's log-probabilities of the winners' transitions, then the losers'.
    pub fn ordered_pairs(&self, logp: &Tensor, logp_ref: &Tensor) -> Result<RatioLoss> {
        let c = logp.dim(0)? / 2;
        let ratio = self.ratios(logp, logp_ref)?;
        let (rw, rl) = (ratio.narrow(0, 0, c)?, ratio.narrow(0, c, c)?);
        let z = ((rw.log()? - rl.log()?)? * self.beta)?;
        // −log σ(z) = log(1 + e^{−z}); z is bounded by β·2·log((1 + ε)/(1 − ε))
        let loss = (z.neg()?.exp()? + 1.0)?.log()?.mean_all()?;
        Ok(RatioLoss {
            loss,
            ratio_win: rw,
            ratio_lose: rl,
        })
    }

    /// D3PO's loss over `c` labelled pairs: `(c,)` log-probabilities of each pair's first and
    /// second transition under the policy and the reference, and `labels` `(h_a, h_b)` per pair
    /// ((1, −1): first preferred, (−1, 1): second, (0, 0): a tie, which gives no gradient).
    pub fn labelled_pairs(
        &self,
        logp_a: &Tensor,
        logp_b: &Tensor,
        ref_a: &Tensor,
        ref_b: &Tensor,
        labels: &[(f64, f64)],
    ) -> Result<Tensor> {
        let dev = logp_a.device();
        let dtype = logp_a.dtype();
        let h = |f: fn(&(f64, f64)) -> f64| {
            Tensor::from_vec(
                labels.iter().map(f).collect::<Vec<f64>>(),
                labels.len(),
                dev,
            )?
            .to_dtype(dtype)
        };
        let ra = self.ratios(logp_a, ref_a)?.log()?;
        let rb = self.ratios(logp_b, ref_b)?.log()?;
        let z = ((ra * h(|l| l.0)?)? + (rb * h(|l| l.1)?)?)?.affine(self.beta, 0.0)?;
        crate::log_sigmoid(&z)?.neg()?.mean_all()
    }
}
