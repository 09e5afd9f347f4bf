//! SPO's pair selection (spo-reference §2): which two candidates of a pool form the training
//! pair, whether their score gap passes the threshold, and which candidate the chain continues
//! from.

use std::fmt;
use std::str::FromStr;

use spo_nn::SeededRng;

macro_rules! named_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vm])* $v),+ }

        impl $name {
            /// Every accepted name, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($s),+];
            /// This variant's name.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$v => $s),+ }
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($s => Ok($name::$v),)+
                    other => Err(format!("`{other}` is not one of {}", Self::NAMES.join(", "))),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

named_enum! {
    /// Which two candidates of a pool form the pair (Table 9).
    PairChoice {
        /// The highest- and the lowest-scored candidate.
        BestWorst = "best-worst",
        /// Two distinct candidates drawn uniformly, ordered by their scores.
        Random = "random",
    }
}

named_enum! {
    /// Which candidate the chain continues from (Table 4).
    Continuation {
        /// One drawn uniformly (the paper's choice).
        Random = "random",
        /// The pair's winner.
        Win = "win",
        /// The pair's loser.
        Lose = "lose",
    }
}

/// How SPO picks pairs in a pool of candidates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairSelection {
    pub pair: PairChoice,
    pub continuation: Continuation,
    /// Keep a pair when `p_win − p_lose` of the 2-way softmax over the two scores exceeds this.
    pub threshold: f64,
}

/// One pool's outcome: the pair `(winner, loser)` if it passed the threshold, and the
/// candidate the chain continues from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Picked {
    pub pair: Option<(usize, usize)>,
    pub next: usize,
}

impl PairSelection {
    /// The score gap that `threshold` means: `p_w − p_l = tanh((s_w − s_l)/2)`, so the gap must
    /// exceed `2·atanh(threshold)`.
    pub fn margin(&self) -> f64 {
        2.0 * self.threshold.atanh()
    }

    /// Picks in a pool of `scores` (one per candidate, at least two), drawing from `rng` in a
    /// fixed order: the random pair's two draws, then the random continuation's.
    pub fn pick(&self, scores: &[f64], rng: &mut SeededRng) -> Picked {
        let k = scores.len();
        let (win, lose) = match self.pair {
            PairChoice::BestWorst => (argmax(scores), argmin(scores)),
            PairChoice::Random => {
                let a = rng.indices(1, k)[0];
                let c = (a + 1 + rng.indices(1, k - 1)[0]) % k;
                if scores[a] >= scores[c] {
                    (a, c)
                } else {
                    (c, a)
                }
            }
        };
        let pair = (scores[win] - scores[lose] > self.margin()).then_some((win, lose));
        let next = match self.continuation {
            Continuation::Win => win,
            Continuation::Lose => lose,
            Continuation::Random => rng.indices(1, k)[0],
        };
        Picked { pair, next }
    }
}

/// The first index of the largest score.
fn argmax(s: &[f64]) -> usize {
    (0..s.len())
        .reduce(|a, c| if s[c] > s[a] { c } else { a })
        .unwrap_or(0)
}

/// The first index of the smallest score.
fn argmin(s: &[f64]) -> usize {
    (0..s.len())
        .reduce(|a, c| if s[c] < s[a] { c } else { a })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(pair: PairChoice, continuation: Continuation, threshold: f64) -> PairSelection {
        PairSelection {
            pair,
            continuation,
            threshold,
        }
    }

    #[test]
    fn best_worst_takes_the_extremes_and_the_first_of_ties() {
        let s = sel(PairChoice::BestWorst, Continuation::Win, 0.0);
        let mut rng = SeededRng::new(0);
        let p = s.pick(&[0.2, 0.9, -0.4, 0.9, -0.4], &mut rng);
        assert_eq!(p.pair, Some((1, 2)));
        assert_eq!(p.next, 1);
        let p = sel(PairChoice::BestWorst, Continuation::Lose, 0.0).pick(&[0.0, 1.0], &mut rng);
        assert_eq!((p.pair, p.next), (Some((1, 0)), 0));
    }

    #[test]
    fn the_threshold_is_on_the_softmax_probability_gap() {
        // p_w − p_l = tanh(Δ/2): Δ = 2·atanh(0.3) ≈ 0.619 is the boundary
        let s = sel(PairChoice::BestWorst, Continuation::Win, 0.3);
        assert!((s.margin() - 0.6190392084062235).abs() < 1e-15);
        let mut rng = SeededRng::new(0);
        assert_eq!(s.pick(&[0.0, 0.62], &mut rng).pair, Some((1, 0)));
        assert_eq!(s.pick(&[0.0, 0.61], &mut rng).pair, None);
        // a pool without a pair still continues
        assert_eq!(s.pick(&[0.0, 0.61], &mut rng).next, 1);
    }

    #[test]
    fn random_pairs_are_distinct_ordered_and_cover_every_pair() {
        let s = sel(PairChoice::Random, Continuation::Random, 0.0);
        let mut rng = SeededRng::new(7);
        let scores = [0.1, 0.4, 0.3, 0.2];
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..400 {
            let p = s.pick(&scores, &mut rng);
            let (w, l) = p
                .pair
                .expect("distinct scores always pass a zero threshold");
            assert_ne!(w, l);
            assert!(scores[w] > scores[l]);
            assert!(p.next < 4);
            seen.insert((w, l));
        }
        assert_eq!(seen.len(), 6, "{seen:?}");
    }

    #[test]
    fn names_parse_and_unknown_names_are_errors() {
        assert_eq!(
            "best-worst".parse::<PairChoice>(),
            Ok(PairChoice::BestWorst)
        );
        assert_eq!("lose".parse::<Continuation>(), Ok(Continuation::Lose));
        assert_eq!(
            "best".parse::<PairChoice>(),
            Err("`best` is not one of best-worst, random".into())
        );
        assert_eq!(Continuation::Random.to_string(), "random");
    }
}
