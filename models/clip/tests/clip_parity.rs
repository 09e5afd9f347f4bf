//! Parity of the CLIP towers with transformers and open_clip on tiny random-weight models.
//!
//! Goldens and models come from tests/fixtures/clip/make_fixtures.py (real vocabulary 49408,
//! real input 224×224 with patch 14, widths shrunk; weights in float16 files).

mod common;

use candle_core::Device;
use common::*;
use spo_clip::{ClipConfig, l2_normalize, load_hf_clip, load_open_clip};

fn cosines(img: &candle_core::Tensor, txt: &candle_core::Tensor) -> Vec<f64> {
    let img = l2_normalize(img).expect("norm");
    let txt = l2_normalize(txt).expect("norm");
    values(&img.matmul(&txt.t().expect("t")).expect("matmul"))
}

#[test]
fn hf_gelu_clip_matches_transformers() {
    let g = golden("pickscore_tiny.json");
    let model = load_hf_clip(&fixtures().join("models/pickscore_tiny"), &Device::Cpu)
        .expect("tiny PickScore loads");
    let txt = model
        .get_text_features(&ids(&g["input_ids"]))
        .expect("text");
    let img = model.get_image_features(&test_pixels(2)).expect("image");
    assert_close(
        "text_embeds",
        &values(&txt),
        &floats(&g["text_embeds"]),
        1e-4,
    );
    assert_close(
        "image_embeds",
        &values(&img),
        &floats(&g["image_embeds"]),
        1e-4,
    );
    assert_close("cosine", &cosines(&img, &txt), &floats(&g["cosine"]), 1e-5);
}

#[test]
fn hf_quick_gelu_clip_matches_transformers() {
    let g = golden("openai_tiny.json");
    let model = load_hf_clip(&fixtures().join("models/openai_tiny"), &Device::Cpu)
        .expect("tiny OpenAI-style CLIP loads");
    let img = model.get_image_features(&test_pixels(2)).expect("image");
    assert_close(
        "image_embeds",
        &values(&img),
        &floats(&g["image_embeds"]),
        1e-4,
    );
}

#[test]
fn open_clip_checkpoint_matches_open_clip() {
    let g = golden("hps_tiny.json");
    let dir = fixtures().join("models/hps_tiny");
    let cfg = ClipConfig::from_file(&dir.join("config.json")).expect("config");
    let model = load_open_clip(&dir.join("hps_tiny.pt"), &cfg, &Device::Cpu)
        .expect("OpenCLIP pickle loads through the key mapping");
    let txt = model
        .get_text_features(&ids(&g["input_ids"]))
        .expect("text");
    let img = model.get_image_features(&test_pixels(2)).expect("image");
    assert_close(
        "text_embeds",
        &values(&txt),
        &floats(&g["text_embeds"]),
        1e-4,
    );
    assert_close(
        "image_embeds",
        &values(&img),
        &floats(&g["image_embeds"]),
        1e-4,
    );
    assert_close("cosine", &cosines(&img, &txt), &floats(&g["cosine"]), 1e-5);
}
