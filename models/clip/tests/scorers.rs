//! The scorers against their references: the real LAION aesthetic head on real CLIP ViT-L/14
//! embeddings (shared/data/aesthetic), and PickScore / HPSv2 / CLIP score / aesthetic on tiny
//! random-weight models end to end (goldens: tests/fixtures/clip/make_fixtures.py), plus the
//! errors a corrupt weights file gets.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use common::*;
use spo_clip::preprocess::load_rgb;
use spo_clip::scorers::aesthetic::MlpHead;
use spo_clip::{ClipError, Metric, ScoreOptions, Scorer, load_hf_clip};

const PROMPTS: [&str; 3] = [
    "a photo of an astronaut riding a horse on the moon",
    "A cup of Coffee &amp; “latte art”, 4k, trending on ArtStation!",
    "",
];

fn photos() -> Vec<image::RgbImage> {
    ["astronaut_crop.png", "coffee_crop.png"]
        .iter()
        .map(|n| load_rgb(&fixtures().join("images").join(n)).expect("photo"))
        .collect()
}

/// Element (i, i) of a row-major (rows × cols) golden matrix, for i < n.
fn diagonal(m: &[f64], cols: usize, n: usize) -> Vec<f64> {
    (0..n).map(|i| m[i * cols + i]).collect()
}

#[test]
fn laion_head_on_real_embeddings_gives_the_known_ratings() {
    let Some(data) = shared_data() else { return };
    let dir = data.join("aesthetic");
    let head =
        MlpHead::load(&dir.join("sac+logos+ava1-l14-linearMSE.pth"), 768).expect("real head loads");
    // shared/data/SOURCES.md, "Known values".
    let known = [
        1.655, 2.359, 3.070, 3.672, 4.238, 4.701, 5.073, 5.365, 5.577, 5.747,
    ];
    let got: Vec<f64> = (0..10)
        .map(|i| {
            let path = dir.join(format!("vit_l_14_embeddings/rating{i}.npy"));
            let e = Tensor::read_npy(&path)
                .expect("npy")
                .to_dtype(DType::F64)
                .expect("f64");
            head.apply(
                &e.flatten_all()
                    .expect("flat")
                    .to_vec1::<f64>()
                    .expect("values"),
            )
        })
        .collect();
    assert_close("aesthetic ratings", &got, &known, 1e-3);
}

fn tiny_aesthetic() -> Option<Scorer> {
    let data = shared_data()?;
    let model =
        load_hf_clip(&fixtures().join("models/openai_tiny"), &Device::Cpu).expect("tiny CLIP");
    let head = MlpHead::load(
        &data.join("aesthetic/sac+logos+ava1-l14-linearMSE.pth"),
        768,
    )
    .expect("head");
    Some(Scorer::from_aesthetic(
        model,
        head,
        &ScoreOptions::default(),
        &Device::Cpu,
    ))
}

#[test]
fn aesthetic_matches_the_reference_on_a_tiny_backbone() {
    let Some(scorer) = tiny_aesthetic() else {
        return;
    };
    let g = golden("openai_tiny.json");
    let got = scorer.score_pixels(&test_pixels(2), &[]).expect("score");
    assert_close("aesthetic (pixels)", &got, &floats(&g["aesthetic"]), 1e-4);
    let got = scorer.score(&photos(), &[]).expect("score");
    assert_close(
        "aesthetic (photos)",
        &got,
        &floats(&g["photo_aesthetic"]),
        1e-4,
    );
}

#[test]
fn pickscore_matches_transformers() {
    let g = golden("pickscore_tiny.json");
    let scorer = Scorer::load(
        Metric::PickScore,
        &fixtures().join("models/pickscore_tiny"),
        &ScoreOptions::default(),
        &Device::Cpu,
    )
    .expect("loads");
    // exp(logit_scale) = e⁴ ≈ 54.6 multiplies the cosine: 1e-4 on the cosine is 5.5e-3 here.
    let got = scorer
        .score_pixels(&test_pixels(2), &PROMPTS[..2])
        .expect("score");
    assert_close(
        "pickscore (pixels)",
        &got,
        &diagonal(&floats(&g["pickscore"]), 3, 2),
        5e-4,
    );
    let photos = photos();
    let got = scorer.score(&photos, &[PROMPTS[0]; 2]).expect("score");
    // The golden is (2 photos × 3 prompts); both photos are paired with prompt 0.
    let m = floats(&g["photo_pickscore"]);
    assert_close("pickscore (photos)", &got, &[m[0], m[3]], 5e-4);
    let paths: Vec<_> = ["astronaut_crop.png", "coffee_crop.png"]
        .iter()
        .map(|n| fixtures().join("images").join(n))
        .collect();
    let from_files = scorer
        .score_files(&paths, &[PROMPTS[0]; 2])
        .expect("score files");
    assert_eq!(
        from_files, got,
        "score_files decodes and scores the same images"
    );
}

#[test]
fn hpsv2_matches_open_clip_with_both_letterbox_modes() {
    let g = golden("hps_tiny.json");
    let weights = fixtures().join("models/hps_tiny/hps_tiny.pt");
    for (antialias, key) in [(true, "antialias"), (false, "no_antialias")] {
        let options = ScoreOptions {
            hps_antialias: antialias,
            ..ScoreOptions::default()
        };
        let scorer = Scorer::load(Metric::HpsV2, &weights, &options, &Device::Cpu).expect("loads");
        let got = scorer.score(&photos(), &[PROMPTS[0]; 2]).expect("score");
        let want: Vec<f64> = floats(&g["photo_cosine"][key])
            .iter()
            .map(|c| 100.0 * c)
            .collect();
        assert_close(&format!("hpsv2 x100 (photos, {key})"), &got, &want, 1e-3);
    }
}

#[test]
fn clip_score_matches_the_torchmetrics_formula() {
    let g = golden("openai_tiny.json");
    let scorer = Scorer::load(
        Metric::ClipScore,
        &fixtures().join("models/openai_tiny"),
        &ScoreOptions::default(),
        &Device::Cpu,
    )
    .expect("loads");
    let got = scorer
        .score_pixels(&test_pixels(2), &PROMPTS[..2])
        .expect("score");
    assert_close(
        "clipscore (pixels)",
        &got,
        &diagonal(&floats(&g["clip_score"]), 3, 2),
        1e-3,
    );
    let got = scorer.score(&photos(), &[PROMPTS[0]; 2]).expect("score");
    assert_close(
        "clipscore (photos)",
        &got,
        &floats(&g["photo_clip_score"]),
        1e-3,
    );
}

#[test]
fn prompts_must_pair_with_images_and_metric_names_parse() {
    let scorer = Scorer::load(
        Metric::PickScore,
        &fixtures().join("models/pickscore_tiny"),
        &ScoreOptions::default(),
        &Device::Cpu,
    )
    .expect("loads");
    assert!(matches!(
        scorer.score(&photos(), &[PROMPTS[0]]),
        Err(ClipError::Input(_))
    ));
    for m in Metric::ALL {
        assert_eq!(m.name().parse::<Metric>().expect("parses"), m);
    }
    let err = "pickscor".parse::<Metric>().expect_err("unknown");
    assert!(err.to_string().contains("known: pickscore"));
}

/// Writes a copy of the tiny PickScore folder with `edit` applied to its tensors.
fn corrupted(edit: impl FnOnce(&mut HashMap<String, Tensor>)) -> tempfile::TempDir {
    let src = fixtures().join("models/pickscore_tiny");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).expect("copy config");
    let mut tensors =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).expect("load");
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).expect("save");
    dir
}

#[test]
fn corrupt_weights_name_the_key_and_the_expected_shape() {
    let key = "vision_model.encoder.layers.1.mlp.fc1.weight";
    let load = |dir: &tempfile::TempDir| {
        load_hf_clip(dir.path(), &Device::Cpu)
            .map(|_| ())
            .expect_err("must fail")
    };

    let missing = corrupted(|t| {
        t.remove(key);
    });
    let err = load(&missing);
    assert!(matches!(err, ClipError::MissingTensor { .. }), "{err}");
    assert!(
        err.to_string().contains(key) && err.to_string().contains("[48, 24]"),
        "{err}"
    );

    let reshaped = corrupted(|t| {
        let w = t[key].t().expect("t").contiguous().expect("contiguous");
        t.insert(key.to_string(), w);
    });
    let err = load(&reshaped);
    assert!(matches!(err, ClipError::ShapeMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains(key) && err.to_string().contains("expected [48, 24]"),
        "{err}"
    );

    let integer = corrupted(|t| {
        let w = t[key].to_dtype(DType::U32).expect("u32");
        t.insert(key.to_string(), w);
    });
    let err = load(&integer);
    assert!(matches!(err, ClipError::DTypeMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains(key) && err.to_string().contains("[48, 24]"),
        "{err}"
    );
}
