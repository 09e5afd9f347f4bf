//! ImageReward against THUDM/ImageReward's own modules (`models/BLIP/vit.py`, `med.py`, the
//! `MLP` head and the mean/std normalisation) on a tiny random-weight model with the real
//! vocabulary (30524), input size (224, patch 16) and text length (35).
//!
//! Goldens: tests/fixtures/clip/make_fixtures.py (`make_image_reward`).

mod common;

use candle_core::Device;
use common::*;
use spo_clip::image_reward::{BertTokenizer, ImageReward};
use spo_clip::preprocess::load_rgb;
use spo_clip::{Metric, ScoreOptions, Scorer};

#[test]
fn image_reward_matches_the_reference_modules() {
    let g = golden("imagereward_tiny.json");
    let dir = fixtures().join("models/imagereward_tiny");
    let model = ImageReward::load_dir(&dir, &Device::Cpu).expect("ImageReward.pt loads");
    let prompts: Vec<&str> = g["prompts"]
        .as_array()
        .expect("prompts")
        .iter()
        .map(|p| p.as_str().expect("prompt"))
        .collect();
    let tokenizer = BertTokenizer::new().expect("tokenizer");
    let (ids_t, mask_t) = tokenizer
        .encode_batch(&prompts, &Device::Cpu)
        .expect("encode");
    assert_eq!(values(&ids_t), values(&ids(&g["input_ids"])), "token ids");
    assert_eq!(
        values(&mask_t),
        values(&ids(&g["attention_mask"])),
        "attention mask"
    );
    let got = model
        .score(&test_pixels(2), &ids_t, &mask_t)
        .expect("score");
    assert_close("imagereward (pixels)", &got, &floats(&g["reward"]), 1e-4);

    let scorer = Scorer::load(
        Metric::ImageReward,
        &dir,
        &ScoreOptions::default(),
        &Device::Cpu,
    )
    .expect("scorer loads");
    let photos: Vec<image::RgbImage> = ["astronaut_crop.png", "coffee_crop.png"]
        .iter()
        .map(|n| load_rgb(&fixtures().join("images").join(n)).expect("photo"))
        .collect();
    let got = scorer.score(&photos, &[prompts[0]; 2]).expect("score");
    assert_close(
        "imagereward (photos)",
        &got,
        &floats(&g["photo_reward"]),
        1e-4,
    );
}
