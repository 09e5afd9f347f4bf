//! `clip-pretrain` and `pickscore-train`: what they store, that every variable learns, that a
//! resumed run equals an uninterrupted one, that the SPM initialises from the PickScore
//! analogue exactly, and (ignored, slow) that both beat chance clearly at default params.

mod scorers_common;

use candle_core::Device;
use scorers_common::{
    as_input, context, interrupted_and_straight, quick_clip, quick_pickscore, run_ok, small_clip,
    small_world, temp_dir,
};
use spo_core::Value;
use spo_nn::{named_vars, vars_without_gradient};
use spo_stages::clip_train::{
    ClipPretrain, Metrics, PickScoreTrain, TinyClip, WorldClip, contrastive_loss, pair_batch_loss,
    retrieval_top1,
};
use spo_stages::tensors::images_to_tensor;
use spo_stages::vocab::Vocab;
use spo_stages::worlddata::{WorldData, load_pairs};

fn get(m: &Metrics, name: &str) -> f64 {
    let v = m
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no metric `{name}` in {m:?}"))
        .1;
    assert!(v.is_finite(), "{name} = {v}");
    v
}

#[test]
fn clip_pretrain_stores_a_loadable_model_and_finite_metrics() {
    let dir = temp_dir();
    let mut cx = context(
        &ClipPretrain,
        &quick_clip(),
        Some(0),
        vec![small_world().clone()],
        &dir,
    );
    let m = ClipPretrain.train(&mut cx).unwrap();
    for f in [
        "clip.safetensors",
        "clip_config.json",
        "vocab.json",
        "clip_loss.parquet",
        "clip_loss.png",
    ] {
        assert!(cx.out_dir().join(f).is_file(), "{f} missing");
    }
    let top1 = get(&m, "val_retrieval_top1");
    assert!(
        top1 <= 1.0 && top1 > 3.0 * get(&m, "val_retrieval_chance"),
        "{m:?}"
    );
    get(&m, "logit_scale");
    let clip = WorldClip::load_dir(cx.out_dir(), &Device::Cpu).unwrap();
    assert_eq!(clip.image_size(), 32);
    let world = WorldData::load(small_world()).unwrap();
    assert!(
        world
            .train
            .iter()
            .all(|p| !clip.vocab.encode(&p.text).contains(&2)),
        "unknown words"
    );
}

#[test]
fn every_clip_variable_gets_a_gradient_from_both_losses() {
    let world = WorldData::load(small_world()).unwrap();
    let vocab = Vocab::build(world.train.iter().map(|p| p.text.as_str()));
    let arch = TinyClip {
        width: 32,
        layers: 2,
        heads: 2,
        patch: 4,
        projection: 16,
    };
    let clip = WorldClip::new(&arch, vocab, 32, 1, &Device::Cpu).unwrap();
    let vars = named_vars(&clip.varmap).unwrap();

    let renders: Vec<_> = world.train[..8]
        .iter()
        .map(|p| spo_world::render(&world.atlas, &p.scene).unwrap())
        .collect();
    let pixels = images_to_tensor(&renders.iter().collect::<Vec<_>>(), &Device::Cpu).unwrap();
    let texts: Vec<&str> = world.train[..8].iter().map(|p| p.text.as_str()).collect();
    let ids = clip.vocab.batch(&texts, &Device::Cpu).unwrap();
    let loss = contrastive_loss(&clip.model, &pixels, &ids).unwrap();
    let missing = vars_without_gradient(&vars, &loss.backward().unwrap()).unwrap();
    assert!(
        missing.is_empty(),
        "contrastive loss: no gradient for {missing:?}"
    );

    let pairs = load_pairs(small_world(), 16).unwrap();
    // Decided pairs only: a batch of ties alone leaves logit_scale without a gradient.
    let rows: Vec<_> = pairs
        .iter()
        .filter(|p| p.labels[0] != p.labels[1])
        .take(8)
        .collect();
    let loss = pair_batch_loss(&clip, &rows, &Device::Cpu).unwrap();
    let missing = vars_without_gradient(&vars, &loss.backward().unwrap()).unwrap();
    assert!(
        missing.is_empty(),
        "preference loss: no gradient for {missing:?}"
    );
}

#[test]
fn preference_loss_of_a_tie_is_zero_when_scores_are_equal() {
    let world = WorldData::load(small_world()).unwrap();
    let vocab = Vocab::build(world.train.iter().map(|p| p.text.as_str()));
    let arch = TinyClip {
        width: 16,
        layers: 1,
        heads: 2,
        patch: 8,
        projection: 8,
    };
    let clip = WorldClip::new(&arch, vocab, 32, 3, &Device::Cpu).unwrap();
    let mut pair = load_pairs(small_world(), 1).unwrap().remove(0);
    pair.images[1] = pair.images[0].clone();
    pair.labels = [0.5, 0.5];
    let loss = pair_batch_loss(&clip, &[&pair], &Device::Cpu).unwrap();
    assert!(loss.to_scalar::<f32>().unwrap().abs() < 1e-6);
    pair.labels = [1.0, 0.0];
    let loss = pair_batch_loss(&clip, &[&pair], &Device::Cpu).unwrap();
    assert!((loss.to_scalar::<f32>().unwrap() - 2f32.ln()).abs() < 1e-5);
}

#[test]
fn clip_pretrain_resumed_from_a_checkpoint_equals_an_uninterrupted_run() {
    let (a, b) = interrupted_and_straight(
        &ClipPretrain,
        &quick_clip(),
        vec![small_world().clone()],
        10,
        20,
        "clip.safetensors",
    );
    assert!(a == b, "clip.safetensors differs after resuming");
}

#[test]
fn pickscore_train_stores_the_same_files_and_resumes_exactly() {
    let inputs = vec![small_world().clone(), small_clip().clone()];
    let dir = temp_dir();
    let mut cx = context(
        &PickScoreTrain,
        &quick_pickscore(),
        Some(0),
        inputs.clone(),
        &dir,
    );
    let m = PickScoreTrain.train(&mut cx).unwrap();
    for f in [
        "clip.safetensors",
        "clip_config.json",
        "vocab.json",
        "pickscore_loss.parquet",
        "pickscore_loss.png",
    ] {
        assert!(cx.out_dir().join(f).is_file(), "{f} missing");
    }
    let acc = get(&m, "heldout_accuracy");
    assert!((0.0..=1.0).contains(&acc));
    assert!(get(&m, "heldout_pairs") > 0.0);
    let (a, b) = interrupted_and_straight(
        &PickScoreTrain,
        &quick_pickscore(),
        inputs,
        10,
        20,
        "clip.safetensors",
    );
    assert!(a == b, "clip.safetensors differs after resuming");
}

#[test]
fn the_spm_initialised_from_the_pickscore_analogue_scores_exactly_like_it() {
    let inputs = vec![small_world().clone(), small_clip().clone()];
    let ps = run_ok(
        &PickScoreTrain,
        &quick_pickscore(),
        Some(0),
        inputs,
        &temp_dir(),
    );
    let clip = WorldClip::load(&ps, &Device::Cpu).unwrap();
    let pick = WorldClip::load(&ps, &Device::Cpu).unwrap();
    let spm = spo_clip::init_spm_from_pickscore(&clip.varmap, clip.model.config(), 7, &Device::Cpu)
        .unwrap();
    let pairs = load_pairs(small_world(), 6).unwrap();
    let images: Vec<_> = pairs.iter().map(|p| &p.images[0]).collect();
    let texts: Vec<&str> = pairs.iter().map(|p| p.caption.as_str()).collect();
    let pixels = images_to_tensor(&images, &Device::Cpu).unwrap();
    let ids = clip.vocab.batch(&texts, &Device::Cpu).unwrap();
    let spm_scores = spm.score(&pixels, &ids, &[0.0; 6]).unwrap();
    let scale = pick.scale().unwrap();
    let want: Vec<f64> = pick
        .cosines(&images, &texts)
        .unwrap()
        .iter()
        .map(|c| scale * c)
        .collect();
    for (s, w) in spm_scores.iter().zip(&want) {
        assert!((s - w).abs() < 1e-4, "SPM {s} vs PickScore analogue {w}");
    }
}

/// The default world and default params: the pretrained CLIP retrieves validation prompts far
/// above chance and the PickScore analogue predicts held-out labels above 0.5 (measured
/// 0.55–0.61 over four runs; see docs/in-world-scorers.md for why not more). Ignored: it trains
/// both models at full size (about a minute of CPU, several on a loaded machine).
#[test]
#[ignore = "trains at default params on the default world: minutes of CPU"]
fn at_default_params_both_models_beat_chance_clearly() {
    let world = run_ok(
        &spo_stages::world::WorldKind,
        &[("oracle_check", Value::Int(0))],
        None,
        vec![],
        &temp_dir(),
    );
    let mut cx = context(
        &ClipPretrain,
        &[],
        Some(0),
        vec![world.clone()],
        &temp_dir(),
    );
    let m = ClipPretrain.train(&mut cx).unwrap();
    println!("clip-pretrain: {m:?}");
    let clip = as_input("clip-pretrain", cx.params().clone(), cx.out_dir());
    assert!(get(&m, "val_retrieval_top1") > 10.0 * get(&m, "val_retrieval_chance"));
    let mut cx = context(
        &PickScoreTrain,
        &[],
        Some(0),
        vec![world, clip],
        &temp_dir(),
    );
    let m = PickScoreTrain.train(&mut cx).unwrap();
    println!("pickscore-train: {m:?}");
    assert!(get(&m, "heldout_accuracy") > 0.53);
}

/// The fast "it learns" check: after the quick run (120 steps on 200 prompts), image → prompt
/// retrieval among 64 training prompts is far above chance (1/64). The default-size check is
/// the ignored test above.
#[test]
fn the_quickly_trained_clip_retrieves_its_training_prompts_far_above_chance() {
    let world = WorldData::load(small_world()).unwrap();
    let clip = WorldClip::load(small_clip(), &Device::Cpu).unwrap();
    let prompts = &world.train[..64];
    let renders: Vec<_> = prompts
        .iter()
        .map(|p| spo_world::render(&world.atlas, &p.scene).unwrap())
        .collect();
    let texts: Vec<&str> = prompts.iter().map(|p| p.text.as_str()).collect();
    let top1 = retrieval_top1(&clip, &renders.iter().collect::<Vec<_>>(), &texts).unwrap();
    assert!(top1 > 0.15, "training-prompt retrieval top-1 {top1}");
}
