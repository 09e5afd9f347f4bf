//! `winrate`: the in-world user study (the paper's Fig. 6). The world's simulated annotator
//! judges, image by image, the samples of two methods for the same prompt from the same
//! initial noise, and the stage reports the share A wins (a tie counts half) with a 95%
//! bootstrap interval over the images.
//!
//! Its inputs are the `world` and two `score` cells, A then B in the order of `needs`; images
//! are matched on `prompt_index` and the recorded image `seed`, which the sampling stage derives
//! from the run's seed, the prompt and the image's number alone, so A's and B's k-th images of a
//! prompt start from the same noise. The annotator is the world's own (its params), with its
//! noise drawn from this cell's seed.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::{Float64Array, Int64Array};
use arrow_schema::{DataType, Field, Schema};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use spo_core::stats::bootstrap_mean_ci;
use spo_core::{Input, ParamSpec, StageContext, StageError, StageKind};

use crate::error::Result;
use crate::world_parquet::{col, f64_at, i64_at, write_table};
use crate::worlddata::{each_row, world_annotator};

/// The `winrate` stage kind.
pub struct WinRate;

impl StageKind for WinRate {
    fn name(&self) -> &'static str {
        "winrate"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "The world's annotator judges two methods' images of the same prompts and noise (two score inputs, A then B): A's win rate with a 95% interval"
    }
    fn params(&self) -> Vec<ParamSpec> {
        vec![]
    }
    fn run(&self, cx: &mut StageContext) -> Result<(), StageError> {
        Ok(run(cx)?)
    }
}

/// One image's alignment and detail, by (prompt_index, image seed).
type Judged = BTreeMap<(i64, i64), (f64, f64)>;

fn run(cx: &mut StageContext) -> Result<()> {
    let world = cx.input_of_kind("world")?;
    let annotator = world_annotator(world)?;
    let scores: Vec<&Input> = cx.inputs().iter().filter(|i| i.kind == "score").collect();
    let [a, b] = scores[..] else {
        return Err(StageError::Failed(format!(
            "stage `{}` needs exactly two `score` stages (A then B), has {}",
            cx.stage(),
            scores.len()
        ))
        .into());
    };
    let (ja, jb) = (judged(a)?, judged(b)?);
    let mut rng = ChaCha8Rng::seed_from_u64(cx.seed().unwrap_or(0) ^ 0x0057_1a7e);
    let mut rows: Vec<(i64, i64, f64)> = Vec::new();
    for (key, (align_a, detail_a)) in &ja {
        let Some((align_b, detail_b)) = jb.get(key) else {
            continue;
        };
        let ua = annotator.utility(*align_a, *detail_a, &mut rng);
        let ub = annotator.utility(*align_b, *detail_b, &mut rng);
        rows.push((key.0, key.1, annotator.label(ua, ub)[0]));
    }
    if rows.is_empty() {
        return Err(StageError::Failed(format!(
            "`{}` and `{}` have no image of the same prompt and seed to compare (were they sampled from the same prompts and run seed?)",
            a.stage, b.stage
        ))
        .into());
    }
    let outcomes: Vec<f64> = rows.iter().map(|r| r.2).collect();
    let n = outcomes.len() as f64;
    let rate = outcomes.iter().sum::<f64>() / n;
    let (lo, hi) = bootstrap_mean_ci(&outcomes, 2000).unwrap_or((rate, rate));
    let schema = Arc::new(Schema::new(vec![
        Field::new("prompt_index", DataType::Int64, false),
        Field::new("seed", DataType::Int64, false),
        Field::new("a_wins", DataType::Float64, false),
    ]));
    write_table(
        cx,
        "judgements.parquet",
        schema,
        vec![
            col(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
            col(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
            col(Float64Array::from_iter_values(outcomes.iter().copied())),
        ],
    )?;
    cx.metric("win_rate", rate);
    cx.metric("win_rate_lo", lo);
    cx.metric("win_rate_hi", hi);
    cx.metric(
        "ties",
        outcomes.iter().filter(|o| **o == 0.5).count() as f64 / n,
    );
    cx.metric("images", n);
    Ok(())
}

fn judged(score: &Input) -> Result<Judged> {
    let path = score.file("scores.parquet")?;
    let mut out = Judged::new();
    each_row(
        &path,
        &["prompt_index", "seed", "alignment", "detail"],
        |c, i| {
            let bad = |col: &str| {
                StageError::Failed(format!("{}: row {i}: `{col}` is null", path.display()))
            };
            let key = (
                i64_at(c[0], i).ok_or_else(|| bad("prompt_index"))?,
                i64_at(c[1], i).ok_or_else(|| bad("seed"))?,
            );
            let value = (
                f64_at(c[2], i).ok_or_else(|| bad("alignment"))?,
                f64_at(c[3], i).ok_or_else(|| bad("detail"))?,
            );
            out.insert(key, value);
            Ok(())
        },
    )?;
    Ok(out)
}
