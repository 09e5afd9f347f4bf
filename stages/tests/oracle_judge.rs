//! The oracle judge (`spo`'s `judge = "oracle"`): the world's noiseless annotator on each image,
//! so a clean render of the prompt outscores a flawed one and a render of another scene, the
//! scale multiplies, the detail-only judge scores any clean render perfect, and a prompt the
//! world does not hold is an error naming it.

mod scorers_common;

use candle_core::Device;
use rand::SeedableRng;
use scorers_common::small_world;
use spo_methods::spo::StepJudge;
use spo_stages::oracle_judge::OracleJudge;
use spo_stages::tensors::images_to_tensor;
use spo_stages::worlddata::{WorldData, world_annotator};
use spo_world::{Flaw, FlawKind, render, render_flawed};

#[test]
fn a_clean_render_of_the_prompt_outscores_a_flawed_one_and_another_scene() {
    let world = WorldData::load(small_world()).unwrap();
    let annotator = world_annotator(small_world()).unwrap();
    let judge = OracleJudge::utility(&world, annotator, 100.0);
    let half = OracleJudge::utility(&world, annotator, 50.0);
    let detail = OracleJudge::detail(&world, 100.0);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let (p, other) = (&world.train[0], &world.train[1]);
    assert_ne!(p.scene, other.scene);
    let clean = render(&world.atlas, &p.scene).unwrap();
    let flaw = Flaw {
        kind: FlawKind::Blur,
        strength: 1.0,
    };
    let blurred = render_flawed(&world.atlas, &p.scene, Some(flaw), &mut rng).unwrap();
    let wrong = render(&world.atlas, &other.scene).unwrap();
    let pixels = images_to_tensor(&[&clean, &blurred, &wrong], &Device::Cpu).unwrap();
    let texts = [p.text.as_str(); 3];
    let s = judge.scores(&pixels, &texts, 500).unwrap();
    assert!(s[0] > s[1] && s[0] > s[2], "{s:?}");
    // a clean render of the prompt is perfect on both terms
    let perfect = 100.0 * (annotator.alignment_weight + annotator.detail_weight);
    assert!((s[0] - perfect).abs() < 1e-6, "{} vs {perfect}", s[0]);
    let h = half.scores(&pixels, &texts, 500).unwrap();
    for (a, b) in s.iter().zip(&h) {
        assert!((a - 2.0 * b).abs() < 1e-9);
    }
    // the detail judge does not see the wrong scene, only that it is drawn cleanly
    let d = detail.scores(&pixels, &texts, 500).unwrap();
    assert!(d[0] > d[1], "{d:?}");
    assert!(
        (d[0] - 100.0).abs() < 1e-6 && (d[2] - 100.0).abs() < 1e-6,
        "{d:?}"
    );
    let e = judge
        .scores(
            &pixels.narrow(0, 0, 1).unwrap(),
            &["a prompt from elsewhere"],
            0,
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("a prompt from elsewhere"), "{e}");
}
