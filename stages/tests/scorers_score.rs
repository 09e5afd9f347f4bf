//! `aesthetic-train` and `score`: the head's files and gradients, its resume, the scores of a
//! hand-made `samples.parquet` (clean renders score perfectly on the oracles, flawed ones
//! lower), and the error for a samples file without its image column.

mod scorers_common;

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Float64Type;
use arrow_array::{ArrayRef, BinaryArray, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use candle_core::Device;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use scorers_common::{
    as_input, context, interrupted_and_straight, quick_aesthetic, run, small_aesthetic, small_clip,
    small_pickscore, small_world, temp_dir,
};
use spo_core::Params;
use spo_nn::{named_vars, vars_without_gradient};
use spo_stages::aesthetic::{AestheticHead, AestheticTrain, HeadConfig};
use spo_stages::clip_train::WorldClip;
use spo_stages::score::{InWorldScorers, Score};
use spo_stages::tensors::png_bytes;
use spo_stages::worlddata::WorldData;
use spo_world::{Flaw, FlawKind};

#[test]
fn aesthetic_train_stores_head_and_backbone_with_finite_metrics() {
    let dir = temp_dir();
    let inputs = vec![small_world().clone(), small_clip().clone()];
    let mut cx = context(&AestheticTrain, &quick_aesthetic(), Some(0), inputs, &dir);
    let m = AestheticTrain.train(&mut cx).unwrap();
    for f in [
        "aesthetic.safetensors",
        "aesthetic_config.json",
        "clip.safetensors",
        "clip_config.json",
        "vocab.json",
        "aesthetic_loss.parquet",
        "aesthetic_loss.png",
    ] {
        assert!(cx.out_dir().join(f).is_file(), "{f} missing");
    }
    for (name, v) in &m {
        assert!(v.is_finite(), "{name} = {v}");
    }
    // The backbone is the clip-pretrain model, byte for byte.
    assert_eq!(
        std::fs::read(cx.out_dir().join("clip.safetensors")).unwrap(),
        std::fs::read(small_clip().dir.join("clip.safetensors")).unwrap()
    );
    let head = AestheticHead::load_dir(cx.out_dir(), &Device::Cpu).unwrap();
    assert_eq!(head.config.hidden, vec![16]);
}

#[test]
fn every_head_variable_gets_a_gradient() {
    let config = HeadConfig {
        input: 8,
        hidden: vec![16, 4],
    };
    let head = AestheticHead::new(config, 2, &Device::Cpu).unwrap();
    let xs = spo_nn::SeededRng::new(1)
        .normal((5, 8), 0.0, 1.0, candle_core::DType::F32, &Device::Cpu)
        .unwrap();
    let loss = head
        .forward(&xs)
        .unwrap()
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap();
    let vars = named_vars(&head.varmap).unwrap();
    assert_eq!(vars.len(), 6);
    let missing = vars_without_gradient(&vars, &loss.backward().unwrap()).unwrap();
    assert!(missing.is_empty(), "no gradient for {missing:?}");
}

#[test]
fn aesthetic_train_resumed_from_a_checkpoint_equals_an_uninterrupted_run() {
    let inputs = vec![small_world().clone(), small_clip().clone()];
    let (a, b) = interrupted_and_straight(
        &AestheticTrain,
        &quick_aesthetic(),
        inputs,
        20,
        40,
        "aesthetic.safetensors",
    );
    assert!(a == b, "aesthetic.safetensors differs after resuming");
}

/// Writes a samples.parquet in the sample stage's schema, leaving out `drop` (a column name).
fn write_samples(dir: &Path, drop: Option<&str>) -> spo_core::Input {
    let world = WorldData::load(small_world()).unwrap();
    let mut rng = spo_nn::SeededRng::new(9);
    let (mut idx, mut prompts, mut scenes, mut seeds, mut pngs) =
        (vec![], vec![], vec![], vec![], vec![]);
    for (i, p) in world.validation.iter().take(6).enumerate() {
        // Image 0 clean, image 1 heavily noised.
        for (k, flaw) in [
            None,
            Some(Flaw {
                kind: FlawKind::Noise,
                strength: 1.0,
            }),
        ]
        .into_iter()
        .enumerate()
        {
            let im =
                spo_world::render_flawed(&world.atlas, &p.scene, flaw, rng.generator()).unwrap();
            idx.push(i as i64);
            prompts.push(p.text.clone());
            scenes.push(p.scene.code(&world.atlas));
            seeds.push(k as i64);
            pngs.push(png_bytes(&im).unwrap());
        }
    }
    let cols: Vec<(&str, DataType, ArrayRef)> = vec![
        (
            "prompt_index",
            DataType::Int64,
            Arc::new(Int64Array::from(idx)),
        ),
        (
            "prompt",
            DataType::Utf8,
            Arc::new(StringArray::from(prompts)),
        ),
        ("scene", DataType::Utf8, Arc::new(StringArray::from(scenes))),
        ("seed", DataType::Int64, Arc::new(Int64Array::from(seeds))),
        (
            "image",
            DataType::Binary,
            Arc::new(BinaryArray::from(
                pngs.iter().map(Vec::as_slice).collect::<Vec<_>>(),
            )),
        ),
    ];
    let cols: Vec<_> = cols
        .into_iter()
        .filter(|(n, _, _)| Some(*n) != drop)
        .collect();
    let schema = Arc::new(Schema::new(
        cols.iter()
            .map(|(n, t, _)| Field::new(*n, t.clone(), false))
            .collect::<Vec<_>>(),
    ));
    let batch =
        RecordBatch::try_new(schema.clone(), cols.into_iter().map(|c| c.2).collect()).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let mut w = ArrowWriter::try_new(
        File::create(dir.join("samples.parquet")).unwrap(),
        schema,
        None,
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    as_input("sample", Params::default(), dir)
}

fn column(path: &Path, name: &str) -> Vec<f64> {
    let r = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
        .unwrap()
        .build()
        .unwrap();
    r.flat_map(|b| {
        let b = b.unwrap();
        b.column_by_name(name)
            .unwrap()
            .as_primitive::<Float64Type>()
            .values()
            .to_vec()
    })
    .collect()
}

#[test]
fn score_writes_every_metric_per_image_and_the_oracles_see_clean_and_flawed_images() {
    let samples = write_samples(&temp_dir().join("samples"), None);
    let inputs = vec![
        samples,
        small_world().clone(),
        small_pickscore().clone(),
        small_aesthetic().clone(),
    ];
    let (r, cx) = run(&Score, &[], None, inputs, &temp_dir());
    r.unwrap();
    let out = cx.out_dir().join("scores.parquet");
    let detail = column(&out, "detail");
    let alignment = column(&out, "alignment");
    assert_eq!(detail.len(), 12);
    for name in ["pickscore", "aesthetic", "clipscore", "detail", "alignment"] {
        assert!(
            column(&out, name).iter().all(|v| v.is_finite()),
            "{name} not finite"
        );
    }
    assert!(
        column(&out, "clipscore")
            .iter()
            .all(|&v| (0.0..=100.0).contains(&v))
    );
    for pair in detail.chunks(2) {
        assert!(pair[0] > 0.99, "clean render detail {}", pair[0]);
        assert!(
            pair[1] < pair[0],
            "noised detail {} vs clean {}",
            pair[1],
            pair[0]
        );
    }
    for (i, a) in alignment.iter().enumerate().step_by(2) {
        assert_eq!(*a, 1.0, "clean render {i} misaligned");
    }
    // The library entry point gives the stage's numbers (to float tolerance: a batch of one
    // sums in another order than the stage's batch of twelve).
    let world = WorldData::load(small_world()).unwrap();
    let scorers = InWorldScorers::load(
        small_world(),
        small_pickscore(),
        small_aesthetic(),
        &Device::Cpu,
    )
    .unwrap();
    let p = &world.validation[0];
    let im = spo_world::render(&world.atlas, &p.scene).unwrap();
    let s = scorers
        .score(&[im], &[p.text.as_str()], &[p.scene])
        .unwrap();
    assert!((s[0].pickscore - column(&out, "pickscore")[0]).abs() < 1e-4);
    let ps = WorldClip::load(small_pickscore(), &Device::Cpu).unwrap();
    assert!(s[0].pickscore <= ps.scale().unwrap() + 1e-9);
}

#[test]
fn a_samples_file_without_its_image_column_is_an_error_naming_file_and_column() {
    let samples = write_samples(&temp_dir().join("samples"), Some("image"));
    let inputs = vec![
        samples,
        small_world().clone(),
        small_pickscore().clone(),
        small_aesthetic().clone(),
    ];
    let (r, _) = run(&Score, &[], None, inputs, &temp_dir());
    let msg = r.expect_err("a missing column must fail").to_string();
    assert!(
        msg.contains("samples.parquet") && msg.contains("`image`"),
        "{msg}"
    );
}

#[test]
fn score_without_a_samples_input_says_what_it_needs() {
    let inputs = vec![
        small_world().clone(),
        small_pickscore().clone(),
        small_aesthetic().clone(),
    ];
    let (r, _) = run(&Score, &[], None, inputs, &temp_dir());
    let msg = r.expect_err("no samples must fail").to_string();
    assert!(msg.contains("samples.parquet"), "{msg}");
}
