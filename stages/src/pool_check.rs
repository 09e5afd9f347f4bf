//! `calibrate`'s pool check: do the judges pick, within one of SPO's pools, the candidate that
//! leads to the better image? For `n` validation prompts a chain is rolled out as SPO rolls out
//! (DDIM 20, η = 1, CFG) to a branch step, four candidates are drawn there and judged as SPO
//! judges them (on their x₀-prediction at the next timestep) by the SPM, the PickScore analogue
//! and the graded detail oracle; every candidate is then continued to t = 0 as `sample` draws
//! (η = 0), and a judge is right when its best candidate's final image has the higher graded
//! detail than its worst (a tie counts half).

use candle_core::{DType, Tensor};
use spo_diffusion::{Ddim, NoiseSchedule, SchedulerConfig};
use spo_nn::SeededRng;

use crate::calibrate::JudgeModels;
use crate::error::Result;
use crate::score::pickscores;
use crate::tensors::tensor_to_images;
use crate::worlddata::{Prompt, WorldData};

/// Candidates per pool, as SPO's default k.
const K: usize = 4;

/// The branch steps of a 20-step chain the check draws pools at (t = 751, 551, 351).
pub const BRANCHES: [usize; 3] = [4, 8, 12];

/// One judge's share of right picks at one branch timestep.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolAccuracy {
    /// `spm`, `pickscore_x0` or `oracle_x0`.
    pub judge: &'static str,
    pub t: usize,
    pub accuracy: f64,
}

/// The check over the first `n` validation prompts of `world`, at each of [`BRANCHES`].
pub(crate) fn pool_accuracies(
    m: &JudgeModels,
    world: &WorldData,
    n: usize,
    seed: u64,
) -> Result<Vec<PoolAccuracy>> {
    let sched = || NoiseSchedule::new(SchedulerConfig::sd15());
    let (d1, d0) = (Ddim::new(sched()?, 20, 1.0)?, Ddim::new(sched()?, 20, 0.0)?);
    let ts = d1.timesteps().to_vec();
    let prompts: Vec<&Prompt> = world.validation.iter().take(n).collect();
    let n = prompts.len();
    let texts: Vec<&str> = prompts.iter().map(|p| p.text.as_str()).collect();
    let texts_k: Vec<&str> = (0..K).flat_map(|_| texts.iter().copied()).collect();
    let (cond, cond_k) = (
        m.text.conditioning(&texts, m.dev)?,
        m.text.conditioning(&texts_k, m.dev)?,
    );
    let nk = n * K;
    let size = world.canvas as usize;
    let mut out = Vec::new();
    for branch in BRANCHES {
        let mut rng = SeededRng::new(seed ^ (0x9001 + branch as u64));
        let mut x = rng.normal((n, 3, size, size), 0.0, 1.0, DType::F32, m.dev)?;
        for &t in &ts[..branch] {
            let eps = cond.guided_eps(&m.unet, &x, &vec![t; n], m.cfg)?;
            let z = rng.normal(x.shape(), 0.0, 1.0, DType::F32, m.dev)?;
            x = d1.step(&eps, &vec![t; n], &x, Some(&z))?.0;
        }
        let eps = cond.guided_eps(&m.unet, &x, &vec![ts[branch]; n], m.cfg)?;
        let transition = d1.transition(&eps, &vec![ts[branch]; n], &x)?;
        let mut cands = Vec::with_capacity(K);
        for _ in 0..K {
            let z = rng.normal(x.shape(), 0.0, 1.0, DType::F32, m.dev)?;
            cands.push(transition.sample(&z)?);
        }
        let mut c = Tensor::cat(&cands, 0)?;
        // judged as SPO judges: the x0-prediction at the next timestep
        let t_judge = ts[branch + 1];
        let eps_c = cond_k.guided_eps(&m.unet, &c, &vec![t_judge; nk], m.cfg)?;
        let (x0_hat, _) = d1.predict_x0_and_eps(&eps_c, &vec![t_judge; nk], &c)?;
        let x0_hat = x0_hat.clamp(-1f32, 1f32)?;
        let (spm, vocab) = &m.spm;
        let ids = vocab.batch(&texts_k, m.dev)?;
        let by_spm = spm.score(&x0_hat, &ids, &vec![t_judge as f32; nk])?;
        let hat = tensor_to_images(&x0_hat)?;
        let by_pickscore = pickscores(m.pickscore, &hat.iter().collect::<Vec<_>>(), &texts_k)?;
        let detail = |images: &[image::RgbImage]| -> Result<Vec<f64>> {
            images
                .iter()
                .enumerate()
                .map(|(i, im)| {
                    Ok(spo_world::judge(&world.atlas, &prompts[i % n].scene, im)?
                        .detail
                        .quality)
                })
                .collect()
        };
        let by_oracle = detail(&hat)?;
        // every candidate continued deterministically to t = 0
        for &t in &ts[branch + 1..] {
            let e = cond_k.guided_eps(&m.unet, &c, &vec![t; nk], m.cfg)?;
            c = d0.step(&e, &vec![t; nk], &c, None)?.0;
        }
        let finals = detail(&tensor_to_images(&c.clamp(-1f32, 1f32)?)?)?;
        for (judge, scores) in [
            ("spm", &by_spm),
            ("pickscore_x0", &by_pickscore),
            ("oracle_x0", &by_oracle),
        ] {
            out.push(PoolAccuracy {
                judge,
                t: ts[branch],
                accuracy: right_picks(scores, &finals, n),
            });
        }
    }
    Ok(out)
}

/// Share of the `n` pools (scores and final details candidate-major, `K·n` each) whose
/// best-scored candidate ends with more detail than the worst-scored (ties half).
fn right_picks(scores: &[f64], finals: &[f64], n: usize) -> f64 {
    let mut right = 0.0;
    for i in 0..n {
        let at = |c: usize| c * n + i;
        let best = (0..K).max_by(|&a, &b| scores[at(a)].total_cmp(&scores[at(b)]));
        let worst = (0..K).min_by(|&a, &b| scores[at(a)].total_cmp(&scores[at(b)]));
        if let (Some(b), Some(w)) = (best, worst) {
            right += match finals[at(b)].total_cmp(&finals[at(w)]) {
                std::cmp::Ordering::Greater => 1.0,
                std::cmp::Ordering::Equal => 0.5,
                std::cmp::Ordering::Less => 0.0,
            };
        }
    }
    right / n.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pick_is_right_when_the_best_scored_candidate_ends_with_more_detail() {
        // two pools (n = 2), candidate-major: pool 0's scores rank candidate 3 best and 0 worst
        let scores = [0.0, 5.0, 1.0, 1.0, 2.0, 3.0, 9.0, 4.0];
        let finals = [0.2, 0.5, 0.3, 0.5, 0.4, 0.5, 0.9, 0.4];
        // pool 0: best 3 (0.9) vs worst 0 (0.2): right; pool 1: best 0 (0.5) vs worst 1 (0.5): tie
        assert_eq!(right_picks(&scores, &finals, 2), 0.75);
        let reversed: Vec<f64> = scores.iter().map(|s| -s).collect();
        assert_eq!(right_picks(&reversed, &finals, 2), 0.25);
    }
}
