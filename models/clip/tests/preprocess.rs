//! Preprocessing against Pillow, transformers, torchvision and HPSv2's letterbox on crops of
//! real photographs (scikit-image's public-domain astronaut and coffee images).
//!
//! Goldens: tests/fixtures/clip/make_fixtures.py (`write_resize_goldens`,
//! `write_preprocess_goldens`); make_bilinear_goldens.py (Pillow's bilinear resize and
//! Diffusion-DPO's torchvision preprocessing).

mod common;

use common::*;
use spo_clip::preprocess::{
    CropRounding, PilFilter, Preprocess, load_rgb, pil_resize, pil_resize_bicubic,
    resize_centre_crop,
};

/// The largest difference of two images' channel values, in 1/255.
fn max_difference(a: &image::RgbImage, b: &image::RgbImage) -> i32 {
    a.as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| (*x as i32 - *y as i32).abs())
        .max()
        .unwrap_or(0)
}

#[test]
fn pillow_bicubic_resize_is_exact_on_photographs() {
    let cases = golden("resize.json");
    let mut checked = 0;
    for case in cases.as_array().expect("cases") {
        let src = load_rgb(
            &fixtures()
                .join("images")
                .join(case["image"].as_str().expect("name")),
        )
        .expect("image");
        let want = load_rgb(
            &fixtures()
                .join("goldens")
                .join(case["golden"].as_str().expect("name")),
        )
        .expect("golden");
        let got = pil_resize_bicubic(&src, want.width(), want.height());
        let worst = max_difference(&got, &want);
        // Within 1/255 is the requirement; the algorithm reproduces Pillow exactly.
        assert_eq!(worst, 0, "{case}: max difference {worst}/255");
        checked += 1;
    }
    assert_eq!(checked, 8);
}

/// Pillow's bilinear resize (the same resampler as bicubic with the triangle filter), and
/// Diffusion-DPO's `Resize(r, BILINEAR)` + `CenterCrop(r)` built on it, pixel for pixel —
/// including a tall shrink, where Pillow 13 runs the vertical pass first.
#[test]
fn pillow_bilinear_resize_and_dpo_preprocessing_are_exact_on_photographs() {
    let g = golden("bilinear.json");
    let mut checked = 0;
    for case in g["cases"].as_array().expect("cases") {
        let name = |k: &str| case[k].as_str().expect("name").to_owned();
        let src = load_rgb(&fixtures().join("images").join(name("image"))).expect("image");
        let want = load_rgb(&fixtures().join("goldens").join(name("golden"))).expect("golden");
        let got = match case["kind"].as_str() {
            Some("resize") => pil_resize(&src, want.width(), want.height(), PilFilter::Bilinear),
            Some("dpo") => resize_centre_crop(
                &src,
                want.width(),
                PilFilter::Bilinear,
                CropRounding::HalfEven,
            ),
            other => panic!("unknown case kind {other:?}"),
        };
        assert_eq!(got.dimensions(), want.dimensions(), "{case}");
        let worst = max_difference(&got, &want);
        assert_eq!(worst, 0, "{case}: max difference {worst}/255");
        checked += 1;
    }
    assert_eq!(checked, 12);
}

fn stride_sample(pixels: &[f32], s: usize) -> Vec<f64> {
    let mut out = Vec::new();
    for c in 0..3 {
        for y in (0..s).step_by(7) {
            for x in (0..s).step_by(7) {
                out.push(pixels[(c * s + y) * s + x] as f64);
            }
        }
    }
    out
}

#[test]
fn pipelines_match_transformers_torchvision_and_hpsv2() {
    let g = golden("preprocess.json");
    for name in ["astronaut_crop.png", "coffee_crop.png"] {
        let img = load_rgb(&fixtures().join("images").join(name)).expect("image");
        let cases = [
            ("hf", Preprocess::HF_CLIP, 1e-5),
            ("torchvision", Preprocess::TORCHVISION, 1e-5),
            (
                "hps_antialias",
                Preprocess::Letterbox {
                    size: 224,
                    antialias: true,
                },
                1e-5,
            ),
            (
                "hps_no_antialias",
                Preprocess::Letterbox {
                    size: 224,
                    antialias: false,
                },
                1e-5,
            ),
        ];
        for (key, pre, tol) in cases {
            let mut out = vec![0f32; 3 * 224 * 224];
            pre.write_into(&img, &mut out).expect("preprocess");
            assert_close(
                &format!("{name} {key}"),
                &stride_sample(&out, 224),
                &floats(&g[name][key]),
                tol,
            );
        }
    }
}
