//! Summaries over seeds: mean ± standard deviation and a bootstrap confidence interval.

use std::collections::BTreeSet;

/// Mean, sample standard deviation (n − 1; 0 for one value) and count.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Summary {
    pub mean: f64,
    pub std: f64,
    pub n: usize,
}

/// Summarises `xs`; `None` when empty.
pub fn summarize(xs: &[f64]) -> Option<Summary> {
    if xs.is_empty() {
        return None;
    }
    let n = xs.len();
    let mean = xs.iter().sum::<f64>() / n as f64;
    let std = if n > 1 {
        (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
    } else {
        0.0
    };
    Some(Summary { mean, std, n })
}

/// A 95% percentile-bootstrap interval for mean(b) − mean(a), resampling each group's seeds
/// with replacement `rounds` times from a fixed RNG seed (so the interval is reproducible).
pub fn bootstrap_diff_ci(a: &[f64], b: &[f64], rounds: usize) -> Option<(f64, f64)> {
    if a.is_empty() || b.is_empty() || rounds == 0 {
        return None;
    }
    let mut rng = SplitMix64(0x5eed_5eed);
    let mut diffs: Vec<f64> = (0..rounds)
        .map(|_| {
            let ma = (0..a.len()).map(|_| a[rng.below(a.len())]).sum::<f64>() / a.len() as f64;
            let mb = (0..b.len()).map(|_| b[rng.below(b.len())]).sum::<f64>() / b.len() as f64;
            mb - ma
        })
        .collect();
    diffs.sort_by(f64::total_cmp);
    let at = |q: f64| diffs[((q * (rounds - 1) as f64).round() as usize).min(rounds - 1)];
    Some((at(0.025), at(0.975)))
}

/// A 95% percentile-bootstrap interval for mean(xs) (the same resampling as
/// [`bootstrap_diff_ci`] against a group of zeros, so intervals are unchanged).
pub fn bootstrap_mean_ci(xs: &[f64], rounds: usize) -> Option<(f64, f64)> {
    bootstrap_diff_ci(&vec![0.0; xs.len()], xs, rounds)
}

/// A 95% bootstrap interval of mean(b) − mean(a) over per-seed values, and whether it pairs the
/// sides seed by seed (they have the same seeds, each once, and more than one).
pub fn delta_ci(a: &[(Option<u64>, f64)], b: &[(Option<u64>, f64)]) -> (Option<(f64, f64)>, bool) {
    let seeds = |p: &[(Option<u64>, f64)]| p.iter().map(|(s, _)| *s).collect::<BTreeSet<_>>();
    let paired = a.len() > 1 && seeds(a) == seeds(b) && seeds(a).len() == a.len();
    if paired {
        let d: Vec<f64> = b
            .iter()
            .filter_map(|(s, vb)| a.iter().find(|(sa, _)| sa == s).map(|(_, va)| vb - va))
            .collect();
        (bootstrap_mean_ci(&d, 2000), true)
    } else {
        let values = |p: &[(Option<u64>, f64)]| p.iter().map(|(_, v)| *v).collect::<Vec<f64>>();
        (bootstrap_diff_ci(&values(a), &values(b), 2000), false)
    }
}

/// A small deterministic RNG (SplitMix64) for resampling.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_sample_std() {
        let s = summarize(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(s.mean, 2.5);
        assert!((s.std - 1.2909944487358056).abs() < 1e-12);
        assert_eq!(summarize(&[5.0]).unwrap().std, 0.0);
        assert!(summarize(&[]).is_none());
    }

    #[test]
    fn bootstrap_interval_brackets_the_difference() {
        let a = [1.0, 1.1, 0.9, 1.05, 0.95];
        let b = [2.0, 2.1, 1.9, 2.05, 1.95];
        let (lo, hi) = bootstrap_diff_ci(&a, &b, 2000).unwrap();
        assert!(lo > 0.8 && hi < 1.2 && lo < 1.0 && hi > 1.0, "({lo}, {hi})");
        // Identical single values: a degenerate interval at the difference.
        assert_eq!(bootstrap_diff_ci(&[1.0], &[3.0], 100), Some((2.0, 2.0)));
    }
}
