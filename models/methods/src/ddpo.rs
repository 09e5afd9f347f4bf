//! DDPO's policy-gradient loss (next-wave A.3; kvablack/ddpo-pytorch `scripts/train.py` and
//! `stat_tracking.py`): advantages normalised per prompt once a prompt has enough rewards (the
//! whole batch otherwise), clipped, and a PPO-clipped ratio against the sampling-time policy.

use std::collections::{BTreeMap, VecDeque};

use candle_core::{Result, Tensor};

/// DDPO's PPO settings: ratio clip 1e-4, advantage clip 5.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ppo {
    pub clip_range: f64,
    pub adv_clip_max: f64,
}

impl Default for Ppo {
    fn default() -> Self {
        Ppo {
            clip_range: 1e-4,
            adv_clip_max: 5.0,
        }
    }
}

impl Ppo {
    /// `mean(max(−A·ρ, −A·clamp(ρ, 1 − c, 1 + c)))` with `A` clipped to ±`adv_clip_max` and
    /// `ρ = exp(logp − logp_sampled)`; all `(n,)`.
    pub fn loss(
        &self,
        logp: &Tensor,
        logp_sampled: &Tensor,
        advantages: &Tensor,
    ) -> Result<Tensor> {
        let adv = advantages.clamp(-self.adv_clip_max, self.adv_clip_max)?;
        let ratio = (logp - logp_sampled)?.exp()?;
        let unclipped = (adv.neg()? * &ratio)?;
        let clipped = (adv.neg()? * ratio.clamp(1.0 - self.clip_range, 1.0 + self.clip_range)?)?;
        unclipped.maximum(&clipped)?.mean_all()
    }
}

/// Per-prompt reward statistics: the last `buffer_size` rewards of each prompt.
#[derive(Debug, Clone)]
pub struct PerPromptStats {
    buffer_size: usize,
    min_count: usize,
    seen: BTreeMap<String, VecDeque<f64>>,
}

impl PerPromptStats {
    /// DDPO's defaults are a buffer of 16 and a minimum count of 16.
    pub fn new(buffer_size: usize, min_count: usize) -> Self {
        PerPromptStats {
            buffer_size,
            min_count,
            seen: BTreeMap::new(),
        }
    }

    /// The tracker with the buffers of an earlier one (as [`PerPromptStats::buffers`] gave
    /// them), for a resumed run.
    pub fn with_buffers(
        buffer_size: usize,
        min_count: usize,
        buffers: impl IntoIterator<Item = (String, Vec<f64>)>,
    ) -> Self {
        let mut stats = PerPromptStats::new(buffer_size, min_count);
        for (prompt, rewards) in buffers {
            let keep = rewards.len().saturating_sub(buffer_size);
            stats
                .seen
                .insert(prompt, rewards[keep..].iter().copied().collect());
        }
        stats
    }

    /// Each prompt's buffered rewards, oldest first, in prompt order.
    pub fn buffers(&self) -> impl Iterator<Item = (&str, Vec<f64>)> {
        self.seen
            .iter()
            .map(|(p, b)| (p.as_str(), b.iter().copied().collect()))
    }

    /// Records a batch's rewards and returns their advantages `(r − mean) / (std + 1e-6)`: over
    /// the prompt's buffer once it holds `min_count` rewards, over the whole batch before.
    pub fn advantages(&mut self, prompts: &[&str], rewards: &[f64]) -> Vec<f64> {
        let batch = mean_std(rewards);
        let mut out = vec![0.0; rewards.len()];
        let mut unique: Vec<&str> = prompts.to_vec();
        unique.sort_unstable();
        unique.dedup();
        for prompt in unique {
            let rows: Vec<usize> = (0..prompts.len())
                .filter(|&i| prompts[i] == prompt)
                .collect();
            let buffer = self.seen.entry(prompt.to_owned()).or_default();
            for &i in &rows {
                if buffer.len() == self.buffer_size {
                    buffer.pop_front();
                }
                buffer.push_back(rewards[i]);
            }
            let (mean, std) = if buffer.len() < self.min_count {
                batch
            } else {
                mean_std(buffer.make_contiguous())
            };
            for &i in &rows {
                out[i] = (rewards[i] - mean) / (std + 1e-6);
            }
        }
        out
    }
}

/// Mean and population standard deviation (numpy's defaults).
fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    (mean, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tracker_rebuilt_from_its_buffers_continues_identically() {
        let mut a = PerPromptStats::new(3, 2);
        a.advantages(&["x", "y", "x"], &[1.0, 2.0, 3.0]);
        a.advantages(&["x", "x"], &[4.0, 5.0]);
        let buffers: Vec<(String, Vec<f64>)> =
            a.buffers().map(|(p, b)| (p.to_owned(), b)).collect();
        assert_eq!(buffers[0], ("x".into(), vec![3.0, 4.0, 5.0]), "capped at 3");
        let mut b = PerPromptStats::with_buffers(3, 2, buffers);
        let next = (["x", "y", "y"], [0.5, 1.5, 2.5]);
        assert_eq!(
            a.advantages(&next.0, &next.1),
            b.advantages(&next.0, &next.1)
        );
    }
}
