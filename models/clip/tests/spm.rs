//! The step-aware preference model: equal to its parent PickScore at initialisation, the
//! released checkpoint layout against a Python reference (tests/fixtures/clip/make_fixtures.py,
//! class `Spm`, written from spo-reference.md §3.1), and trainable end to end.

mod common;

use candle_core::{DType, Device};
use candle_nn::VarMap;
use common::*;
use spo_clip::weights::{CheckedWeights, read_tensors, strip_prefix};
use spo_clip::{ClipConfig, SpmVariant, init_spm_from_pickscore, load_hf_clip_trainable, load_spm};

fn config() -> ClipConfig {
    ClipConfig::from_file(&fixtures().join("models/pickscore_tiny/config.json")).expect("config")
}

#[test]
fn spm_at_initialisation_equals_its_parent_pickscore_exactly() {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let parent = load_hf_clip_trainable(&fixtures().join("models/pickscore_tiny"), &varmap, &dev)
        .expect("parent loads");
    let spm = init_spm_from_pickscore(&varmap, &config(), 7, &dev).expect("spm");
    let pixels = test_pixels(3);
    let want = values(&parent.get_image_features(&pixels).expect("parent"));
    for t in [0.0, 500.0, 999.0] {
        let got = values(&spm.image_features(&pixels, &[t; 3]).expect("spm"));
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert_eq!(
            worst, 0.0,
            "t = {t}: SPM differs from PickScore by {worst:e}"
        );
    }
    // The new modules exist and hold SPO's initial values.
    let names: Vec<String> = spo_nn::named_vars(&varmap)
        .expect("vars")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(names.contains(&"t_embedder.mlp.0.weight".to_string()));
    assert!(names.contains(&"vision_model.encoder.layers.1.adaLN_modulation.1.bias".to_string()));
}

#[test]
fn released_layout_matches_the_python_reference() {
    let g = golden("spm_tiny.json");
    let spm = load_spm(
        &fixtures().join("models/spm_tiny.bin"),
        &config(),
        &Device::Cpu,
    )
    .expect("`model.`-prefixed SPM pickle loads");
    let ids = ids(&golden("pickscore_tiny.json")["input_ids"])
        .narrow(0, 0, 2)
        .expect("2 prompts");
    let pixels = test_pixels(2);
    let txt = spo_clip::l2_normalize(&spm.text_features(&ids).expect("text")).expect("norm");
    let scale = spm.clip().logit_scale().exp().expect("exp");
    for (k, t) in [0.0f32, 500.0, 999.0].into_iter().enumerate() {
        let img = spo_clip::l2_normalize(&spm.image_features(&pixels, &[t; 2]).expect("img"))
            .expect("norm");
        let scores = img
            .matmul(&txt.t().expect("t"))
            .expect("matmul")
            .broadcast_mul(&scale)
            .expect("scale");
        // exp(4)·cos: 5e-4 here is 1e-5 on the cosine.
        assert_close(
            &format!("spm score t={t}"),
            &values(&scores),
            &floats(&g["score"][k]),
            5e-4,
        );
        let paired = spm.score(&pixels, &ids, &[t; 2]).expect("score");
        let m = floats(&g["score"][k]);
        assert_close(&format!("spm paired t={t}"), &paired, &[m[0], m[3]], 5e-4);
    }
}

#[test]
fn every_trainable_variable_of_the_spm_gets_a_gradient() {
    let dev = Device::Cpu;
    let path = fixtures().join("models/spm_tiny.bin");
    // The released layout with random adaLN weights (at SPO's zero init the t_embedder's
    // gradient is zero by construction until the adaLN weights move).
    let weights = CheckedWeights::new(
        &path,
        strip_prefix(read_tensors(&path).expect("read"), "model."),
    );
    let cfg = config();
    weights
        .build(DType::F32, &dev, |vb| {
            spo_clip::Spm::new(&cfg, SpmVariant::TimeConditioned, vb)
        })
        .expect("checked build");
    let varmap = VarMap::new();
    weights.copy_used_into(&varmap, &dev).expect("into var map");
    let spm = spo_clip::Spm::new(
        &cfg,
        SpmVariant::TimeConditioned,
        candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &dev),
    )
    .expect("trainable spm");
    // One preference pair (SPM loss, spo-reference.md §3.3): same prompt, same t, image 0 wins.
    let ids = ids(&golden("pickscore_tiny.json")["input_ids"])
        .narrow(0, 0, 1)
        .expect("1 prompt");
    let ids = ids
        .broadcast_as((2, 77))
        .expect("b")
        .contiguous()
        .expect("c");
    let logits = spm
        .logits(&test_pixels(2), &ids, &[321.0, 321.0])
        .expect("logits");
    let log_p = candle_nn::ops::log_softmax(&logits.unsqueeze(0).expect("u"), 1).expect("lsm");
    let loss = log_p
        .narrow(1, 0, 1)
        .expect("winner")
        .neg()
        .expect("neg")
        .sum_all()
        .expect("sum");
    let grads = loss.backward().expect("backward");
    let vars = spo_nn::named_vars(&varmap).expect("vars");
    assert!(vars.len() > 40, "{} variables", vars.len());
    let missing = spo_nn::vars_without_gradient(&vars, &grads).expect("check");
    assert!(missing.is_empty(), "no gradient for {missing:?}");
}
