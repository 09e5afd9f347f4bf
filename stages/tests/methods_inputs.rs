//! The method kinds on inputs they cannot use: a reward model for another canvas, a world whose
//! pairs are all ties, a reward model that scores NaN; and a cost curve over a method that kept
//! no snapshots. Each is an error naming what is wrong, and the cell writes nothing.

mod scorers_common;

use std::path::Path;

use candle_core::{Device, Tensor};
use scorers_common::{
    as_input, run, run_ok, small_aesthetic, small_clip, small_pickscore, small_world, temp_dir,
    tiny_base,
};
use spo_core::{Input, StageKind, Value};
use spo_stages::clip_train::CLIP_WEIGHTS;
use spo_stages::curve::Curve;
use spo_stages::d3po::D3po;
use spo_stages::ddpo::Ddpo;
use spo_stages::diffusion_dpo::{DiffusionDpo, MapoTrain};
use spo_stages::world::WorldKind;

fn world(set: &[(&str, Value)]) -> Input {
    let mut all = vec![
        ("train_prompts", Value::Int(40)),
        ("validation_prompts", Value::Int(8)),
        ("oracle_check", Value::Int(0)),
    ];
    all.extend(set.iter().cloned());
    run_ok(&WorldKind, &all, None, vec![], &temp_dir())
}

fn nothing_written(out: &Path) -> bool {
    std::fs::read_dir(out).unwrap().next().is_none()
}

const QUICK_ONLINE: [(&str, Value); 3] = [
    ("rounds", Value::Int(1)),
    ("prompts", Value::Int(2)),
    ("steps", Value::Int(2)),
];

#[test]
fn an_online_method_refuses_a_reward_model_for_another_canvas() {
    let small = world(&[("canvas", Value::Int(16))]);
    let kinds: [&dyn StageKind; 2] = [&D3po, &Ddpo];
    for kind in kinds {
        let inputs = vec![
            small.clone(),
            small_clip().clone(),
            tiny_base().clone(),
            small_pickscore().clone(),
        ];
        let (r, cx) = run(kind, &QUICK_ONLINE, Some(0), inputs, &temp_dir());
        let e = r
            .expect_err("a 32-pixel reward on a 16-pixel world")
            .to_string();
        assert!(
            e.contains("input `pickscore-train`")
                && e.contains("takes 32×32 images, but the world draws 16×16"),
            "{}: {e}",
            kind.name()
        );
        assert!(nothing_written(cx.out_dir()), "{}", kind.name());
    }
}

#[test]
fn an_offline_method_refuses_a_world_whose_pairs_are_all_ties() {
    let ties = world(&[("tie_margin", Value::Float(1e9))]);
    let kinds: [&dyn StageKind; 2] = [&DiffusionDpo, &MapoTrain];
    for kind in kinds {
        let inputs = vec![ties.clone(), small_clip().clone(), tiny_base().clone()];
        let (r, cx) = run(kind, &[], Some(0), inputs, &temp_dir());
        let e = r.expect_err("pairs that are all ties").to_string();
        assert!(
            e.contains("input `world`")
                && e.contains("pairs.parquet: no pair with a preference (every pair a tie)"),
            "{}: {e}",
            kind.name()
        );
        assert!(nothing_written(cx.out_dir()), "{}", kind.name());
    }
}

#[test]
fn a_reward_that_is_not_a_number_stops_an_online_method_naming_the_prompt() {
    // the PickScore analogue with its image projection poisoned
    let dir = temp_dir();
    let reward = small_pickscore();
    for f in &reward.manifest.files {
        std::fs::copy(reward.dir.join(&f.path), dir.join(&f.path)).unwrap();
    }
    let path = dir.join(CLIP_WEIGHTS);
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let name = "visual_projection.weight";
    let w = tensors.get(name).expect("the projection's weights");
    let nan = Tensor::full(f32::NAN, w.shape(), &Device::Cpu).unwrap();
    tensors.insert(name.to_owned(), nan);
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let poisoned = as_input("pickscore-train", reward.manifest.params.clone(), &dir);

    let kinds: [&dyn StageKind; 2] = [&D3po, &Ddpo];
    for kind in kinds {
        let inputs = vec![
            small_world().clone(),
            small_clip().clone(),
            tiny_base().clone(),
            poisoned.clone(),
        ];
        let (r, cx) = run(kind, &QUICK_ONLINE, Some(0), inputs, &temp_dir());
        let e = r.expect_err("NaN rewards").to_string();
        assert!(
            e.contains("the reward model (the PickScore analogue) gave NaN for the prompt \""),
            "{}: {e}",
            kind.name()
        );
        assert!(nothing_written(cx.out_dir()), "{}", kind.name());
    }
}

#[test]
fn a_curve_over_a_method_that_kept_no_snapshots_names_the_param() {
    let mut set = QUICK_ONLINE.to_vec();
    set.push(("snapshots", Value::Int(0)));
    let inputs = vec![
        small_world().clone(),
        small_clip().clone(),
        tiny_base().clone(),
        small_pickscore().clone(),
    ];
    let method = run_ok(&Ddpo, &set, Some(0), inputs, &temp_dir());
    let inputs = vec![
        small_world().clone(),
        small_clip().clone(),
        tiny_base().clone(),
        small_pickscore().clone(),
        small_aesthetic().clone(),
        method,
    ];
    let (r, cx) = run(&Curve, &[], Some(0), inputs, &temp_dir());
    let e = r.expect_err("no snapshots to draw").to_string();
    assert!(
        e.contains("none of its inputs kept snapshots") && e.contains("`snapshots` > 0"),
        "{e}"
    );
    assert!(nothing_written(cx.out_dir()));
}
