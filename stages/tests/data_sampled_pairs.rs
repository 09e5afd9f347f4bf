//! `sample-pairs` on a small world with a tiny base: one Pick-a-Pic row per prompt, labels that
//! are the world's annotator's on what the oracles parse, byte-identical reruns, refused params;
//! and `train-spm` drawing its batches from them only when `sampled_share` asks.

mod scorers_common;

use rand::SeedableRng;

use scorers_common::{run, run_ok, small_clip, small_pickscore, small_world, temp_dir, tiny_base};
use spo_core::{Input, Value};
use spo_stages::sample_pairs::SamplePairs;
use spo_stages::spm::TrainSpm;
use spo_stages::worlddata::{WorldData, load_pairs, world_annotator};

fn inputs() -> Vec<Input> {
    vec![
        small_world().clone(),
        small_clip().clone(),
        tiny_base().clone(),
    ]
}

const QUICK: [(&str, Value); 3] = [
    ("prompts", Value::Int(6)),
    ("steps", Value::Int(3)),
    ("batch", Value::Int(4)),
];

fn with(extra: &[(&'static str, Value)]) -> Vec<(&'static str, Value)> {
    QUICK.iter().cloned().chain(extra.iter().cloned()).collect()
}

#[test]
fn each_prompt_gets_one_pair_labelled_by_the_worlds_annotator() {
    let world = WorldData::load(small_world()).unwrap();
    let exact = [
        ("annotator_noise", Value::Float(0.0)),
        ("tie_margin", Value::Float(0.0)),
    ];
    // the world's weights, then detail alone
    for weights in [
        vec![],
        vec![("alignment_weight", 0.0), ("detail_weight", 1.0)],
    ] {
        let mut set = with(&exact);
        set.extend(weights.iter().map(|(k, v)| (*k, Value::Float(*v))));
        let cell = run_ok(&SamplePairs, &set, None, inputs(), &temp_dir());
        let pairs = load_pairs(&cell, 0).unwrap();
        assert_eq!(pairs.len(), 6);
        let mut annotator = world_annotator(small_world()).unwrap();
        annotator.noise = 0.0;
        annotator.tie_margin = 0.0;
        for (k, v) in &weights {
            match *k {
                "alignment_weight" => annotator.alignment_weight = *v,
                _ => annotator.detail_weight = *v,
            }
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        for (i, pair) in pairs.iter().enumerate() {
            assert_eq!(pair.caption, world.train[i].text);
            assert_ne!(
                pair.images[0], pair.images[1],
                "pair {i}: two chains, one image"
            );
            let u: Vec<f64> = pair
                .images
                .iter()
                .map(|im| {
                    let j = spo_world::judge(&world.atlas, &world.train[i].scene, im).unwrap();
                    annotator.utility(j.alignment.score(), j.detail.quality, &mut rng)
                })
                .collect();
            assert_ne!(u[0], u[1], "pair {i}: images of equal utility");
            assert_eq!(
                pair.labels,
                annotator.label(u[0], u[1]),
                "pair {i} {weights:?}"
            );
        }
    }
}

#[test]
fn reruns_are_byte_identical_and_shared_steps_give_other_pairs() {
    let bytes = |set: &[(&'static str, Value)]| {
        let cell = run_ok(&SamplePairs, set, None, inputs(), &temp_dir());
        std::fs::read(cell.dir.join("pairs.parquet")).unwrap()
    };
    let a = bytes(&QUICK);
    assert_eq!(a, bytes(&QUICK));
    assert_ne!(a, bytes(&with(&[("shared_steps", Value::Int(2))])));
}

#[test]
fn chains_that_cannot_branch_are_refused() {
    for (extra, says) in [
        (vec![("shared_steps", Value::Int(3))], "must be below steps"),
        (
            vec![("shared_steps", Value::Int(1)), ("eta", Value::Float(0.0))],
            "needs eta > 0",
        ),
    ] {
        let (r, cx) = run(&SamplePairs, &with(&extra), None, inputs(), &temp_dir());
        let e = r.expect_err("refused").to_string();
        assert!(e.contains(says), "{e}");
        assert!(!cx.out_dir().join("pairs.parquet").exists());
    }
}

#[test]
fn the_spm_trains_on_sampled_pairs_only_when_asked() {
    let sampled = run_ok(&SamplePairs, &QUICK, None, inputs(), &temp_dir());
    let spm = |share: f64, with_sampled: bool| {
        let mut ins = vec![
            small_world().clone(),
            small_clip().clone(),
            tiny_base().clone(),
            small_pickscore().clone(),
        ];
        if with_sampled {
            ins.push(sampled.clone());
        }
        let set = [
            ("steps", Value::Int(2)),
            ("batch", Value::Int(4)),
            ("sampled_share", Value::Float(share)),
        ];
        let cell = run_ok(&TrainSpm, &set, None, ins, &temp_dir());
        std::fs::read(cell.dir.join("spm.safetensors")).unwrap()
    };
    let alone = spm(0.5, false);
    assert_eq!(
        alone,
        spm(0.0, true),
        "share 0 must ignore the sampled pairs"
    );
    assert_ne!(alone, spm(0.5, true), "share 0.5 must train on them");
}
