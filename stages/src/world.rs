//! The `world` stage kind: builds the embedded emoji world (spo-world) from a seed and stores
//! it as Parquet: the object list, training and validation prompt tables, generic preference
//! pairs in Pick-a-Pic's own schema (PNG bytes in `jpg_0` / `jpg_1`), the ground truth of
//! every image, and a grid PNG of sample pairs with their labels for people to look at.

use std::sync::Arc;

use arrow_array::{BooleanArray, Float64Array, Int32Array, Int64Array, StringArray};
use arrow_schema::{DataType, Field, Schema};
use spo_core::{ParamSpec, StageContext, StageError, StageKind};
use spo_world::{Annotator, Grammar, Layout, PairRecord, Position, Scene, World, WorldConfig};

use crate::error::Result;
use crate::pickapic::{PairRow, PairsWriter};
use crate::prompts::{PromptRow, write_prompts};
use crate::tensors::png_bytes;
use crate::world_parquet::{col, write_table};

spo_core::stage_params! {
    /// The params of `world`.
    pub struct WorldParams {
        /// the world's seed: objects, prompts, renders, labels
        seed: u64 = int(0).min(0.0),
        /// canvas side in pixels
        canvas: u32 = int(32).range(16.0, 256.0),
        /// number of emoji object classes
        objects: usize = int(24).range(2.0, 400.0),
        /// prompts use the first N of white, gray, black, red, green, blue, yellow, pink
        backgrounds: usize = int(Grammar::default().backgrounds as i64).range(1.0, 8.0),
        /// share of prompts showing a pair of different objects
        pair_share: f64 = float(Grammar::default().pair_share).range(0.0, 1.0),
        /// share of objects drawn tinted instead of in their own colours
        tint_share: f64 = float(Grammar::default().tint_share).range(0.0, 1.0),
        /// training prompts (SPO's 4k analogue)
        train_prompts: usize = int(4000).min(1.0),
        /// validation prompts, disjoint from training (validation_unique analogue)
        validation_prompts: usize = int(500).min(1.0),
        /// preference pairs per training prompt
        pairs_per_prompt: usize = int(1).range(1.0, 16.0),
        /// annotator: weight of prompt alignment
        alignment_weight: f64 = float(Annotator::default().alignment_weight).min(0.0),
        /// annotator: weight of detail quality
        detail_weight: f64 = float(Annotator::default().detail_weight).min(0.0),
        /// annotator: std of the noise on each image's utility
        annotator_noise: f64 = float(Annotator::default().noise).min(0.0),
        /// annotator: utilities closer than this are a tie
        tie_margin: f64 = float(Annotator::default().tie_margin).min(0.0),
        /// pairs drawn in grid.png
        grid_pairs: usize = int(8).range(1.0, 64.0),
        /// images re-judged by the oracles to report their agreement with the truth
        oracle_check: usize = int(256).min(0.0),
    }
}

/// The `world` stage kind.
pub struct WorldKind;

impl StageKind for WorldKind {
    fn name(&self) -> &'static str {
        "world"
    }
    fn version(&self) -> u32 {
        // 4: coarser detail flaws and a third high-pass band in the graded detail quality
        //    change the renders, the annotator's utilities and so the labels.
        // 3: the graded (high-pass) detail quality changes the annotator's utilities and so
        // the labels; prompts follow the grammar params.
        // 2: the refined oracle changes `oracle_alignment_agreement` (the files are unchanged).
        4
    }
    fn summary(&self) -> &'static str {
        "Build the emoji world: prompts (train / validation), generic preference pairs in Pick-a-Pic's schema, ground truth, a sample grid"
    }
    fn params(&self) -> Vec<ParamSpec> {
        WorldParams::specs()
    }
    fn run(&self, cx: &mut StageContext) -> Result<(), StageError> {
        Ok(run(cx)?)
    }
}

/// Computes one cell of this kind.
fn run(cx: &mut StageContext) -> Result<()> {
    let p = WorldParams::from_params(cx.params())?;
    let config = WorldConfig {
        seed: p.seed,
        canvas: p.canvas,
        objects: p.objects,
        train_prompts: p.train_prompts,
        validation_prompts: p.validation_prompts,
        pairs_per_prompt: p.pairs_per_prompt,
        grammar: Grammar {
            backgrounds: p.backgrounds,
            pair_share: p.pair_share,
            tint_share: p.tint_share,
        },
        annotator: Annotator {
            alignment_weight: p.alignment_weight,
            detail_weight: p.detail_weight,
            noise: p.annotator_noise,
            tie_margin: p.tie_margin,
        },
    };
    let (grid_pairs, oracle_check) = (p.grid_pairs, p.oracle_check);
    let world = World::build(&config)?;

    write_objects(cx, &world)?;
    for (rel, set) in [
        ("prompts_train.parquet", &world.train),
        ("prompts_validation.parquet", &world.validation),
    ] {
        let rows: Vec<PromptRow> = set
            .iter()
            .enumerate()
            .map(|(i, r)| PromptRow {
                index: i as i64,
                prompt: r.prompt.clone(),
                category: Some(category(&r.scene).to_owned()),
                metadata: None,
            })
            .collect();
        let scenes = set.iter().map(|r| r.scene.code(&world.atlas)).collect();
        write_prompts(cx, rel, "world", &rows, &[("scene", scenes)])?;
    }
    let uids = write_pairs(cx, &world)?;
    write_truth(cx, &world, &uids)?;
    let grid = grid_png(&world, grid_pairs)?;
    cx.write_artifact("grid.png", &grid)?;

    let d = world.disagreement();
    let ties = world.pairs.iter().filter(|p| p.labels[0] == 0.5).count();
    cx.metric("train_prompts", world.train.len() as f64);
    cx.metric("validation_prompts", world.validation.len() as f64);
    cx.metric("pairs", world.pairs.len() as f64);
    cx.metric("tie_share", ties as f64 / world.pairs.len().max(1) as f64);
    cx.metric("generic_vs_detail_disagreement", d.share());
    cx.metric("generic_vs_detail_compared", d.compared as f64);
    let (agree, checked) = oracle_agreement(&world, oracle_check)?;
    if checked > 0 {
        cx.metric("oracle_alignment_agreement", agree as f64 / checked as f64);
    }
    Ok(())
}

/// GenEval-style category of a world prompt.
fn category(scene: &Scene) -> &'static str {
    match scene.layout {
        Layout::Empty => "empty",
        Layout::Pair { .. } => "two_object",
        Layout::Single { count, .. } if count > 1 => "counting",
        Layout::Single { position, .. } if position != Position::Center => "position",
        Layout::Single { entity, .. } if entity.tint.is_some() => "colors",
        Layout::Single { .. } => "single_object",
    }
}

fn write_objects(cx: &mut StageContext, world: &World) -> Result<()> {
    let classes = world.atlas.classes();
    let schema = Arc::new(Schema::new(vec![
        Field::new("class", DataType::Int32, false),
        Field::new("emoji", DataType::Utf8, false),
        Field::new("name", DataType::Utf8, false),
    ]));
    let columns = vec![
        col(Int32Array::from_iter_values(0..classes.len() as i32)),
        col(StringArray::from_iter_values(
            classes.iter().map(|c| c.emoji),
        )),
        col(StringArray::from_iter_values(
            classes.iter().map(|c| c.name),
        )),
    ];
    write_table(cx, "objects.parquet", schema, columns)
}

/// Writes pairs.parquet; returns each pair's two image uids (hex SHA-256 of the PNG, 32 digits).
fn write_pairs(cx: &mut StageContext, world: &World) -> Result<Vec<[String; 2]>> {
    let per = world.config.pairs_per_prompt as i64;
    let mut uids = Vec::with_capacity(world.pairs.len());
    let bar = cx.progress(world.pairs.len() as u64, "pairs");
    let mut out = PairsWriter::create(cx, "pairs.parquet")?;
    for (i, pair) in world.pairs.iter().enumerate() {
        let row = PairRow::generated(
            i as i64,
            world.train[pair.prompt].prompt.clone(),
            [
                png_bytes(&pair.images[0].image)?,
                png_bytes(&pair.images[1].image)?,
            ],
            pair.labels,
            [pair.images[0].renderer, pair.images[1].renderer],
            per,
        );
        let (u0, u1) = (row.image_0_uid.clone(), row.image_1_uid.clone());
        out.push(row)?;
        uids.push([u0, u1]);
        bar.inc(1);
    }
    bar.finish_and_clear();
    out.finish()?;
    Ok(uids)
}

/// One row of truth.parquet: pair index, side, pair.
type TruthRow<'p> = (usize, usize, &'p PairRecord);

/// Writes truth.parquet: one row per image of every pair.
fn write_truth(cx: &mut StageContext, world: &World, uids: &[[String; 2]]) -> Result<()> {
    let rows: Vec<(usize, usize, &PairRecord)> = world
        .pairs
        .iter()
        .enumerate()
        .flat_map(|(i, p)| [(i, 0, p), (i, 1, p)])
        .collect();
    fn im<'p>(&(_, side, p): &(usize, usize, &'p PairRecord)) -> &'p spo_world::ImageRecord {
        &p.images[side]
    }
    let strs =
        |f: &dyn Fn(&TruthRow) -> Option<String>| col(StringArray::from_iter(rows.iter().map(f)));
    let bools = |f: &dyn Fn(&spo_world::Alignment) -> bool| {
        col(BooleanArray::from_iter(
            rows.iter().map(|r| Some(f(&im(r).alignment))),
        ))
    };
    let floats =
        |f: &dyn Fn(&TruthRow) -> Option<f64>| col(Float64Array::from_iter(rows.iter().map(f)));
    let schema = Arc::new(Schema::new(vec![
        Field::new("image_uid", DataType::Utf8, false),
        Field::new("ranking_id", DataType::Int64, false),
        Field::new("side", DataType::Int64, false),
        Field::new("renderer", DataType::Utf8, false),
        Field::new("prompted_scene", DataType::Utf8, false),
        Field::new("drawn_scene", DataType::Utf8, false),
        Field::new("layout_error", DataType::Utf8, true),
        Field::new("flaw", DataType::Utf8, true),
        Field::new("flaw_strength", DataType::Float64, true),
        Field::new("object_ok", DataType::Boolean, false),
        Field::new("colour_ok", DataType::Boolean, false),
        Field::new("position_ok", DataType::Boolean, false),
        Field::new("count_ok", DataType::Boolean, false),
        Field::new("alignment", DataType::Float64, false),
        Field::new("detail", DataType::Float64, false),
        Field::new("utility", DataType::Float64, false),
        Field::new("label", DataType::Float64, false),
    ]));
    let a = &world.atlas;
    let columns = vec![
        strs(&|&(i, side, _)| Some(uids[i][side].clone())),
        col(Int64Array::from_iter_values(
            rows.iter().map(|r| r.0 as i64),
        )),
        col(Int64Array::from_iter_values(
            rows.iter().map(|r| r.1 as i64),
        )),
        strs(&|r| Some(im(r).renderer.to_owned())),
        strs(&|r| Some(world.train[r.2.prompt].scene.code(a))),
        strs(&|r| Some(im(r).scene.code(a))),
        strs(&|r| im(r).layout_error.map(|e| e.name().to_owned())),
        strs(&|r| im(r).flaw.map(|f| f.kind.name().to_owned())),
        floats(&|r| im(r).flaw.map(|f| f64::from(f.strength))),
        bools(&|x| x.object),
        bools(&|x| x.colour),
        bools(&|x| x.position),
        bools(&|x| x.count),
        floats(&|r| Some(im(r).alignment.score())),
        floats(&|r| Some(im(r).detail)),
        floats(&|r| Some(im(r).utility)),
        floats(&|r| Some(r.2.labels[r.1])),
    ];
    write_table(cx, "truth.parquet", schema, columns)
}

/// Re-judges the first `n` images with the oracles; returns (alignment agreements, images).
fn oracle_agreement(world: &World, n: usize) -> Result<(usize, usize)> {
    let mut agree = 0;
    let images = world
        .pairs
        .iter()
        .flat_map(|p| p.images.iter().map(move |im| (p.prompt, im)))
        .take(n);
    let mut checked = 0;
    for (prompt, im) in images {
        let a = spo_world::alignment(&world.atlas, &world.train[prompt].scene, &im.image)?;
        agree += usize::from(a == im.alignment);
        checked += 1;
    }
    Ok((agree, checked))
}

/// Sample pairs side by side, each image magnified, with three bars under it: the label
/// (green preferred, red rejected, amber tie), then alignment (blue) and detail quality
/// (violet) as lengths.
fn grid_png(world: &World, pairs: usize) -> Result<Vec<u8>> {
    const ZOOM: u32 = 4;
    const GAP: u32 = 6;
    const BAR: u32 = 5;
    let side = world.config.canvas * ZOOM;
    let cell_h = side + 3 * (BAR + 2) + GAP;
    let n = pairs.min(world.pairs.len()) as u32;
    let (w, h) = (2 * side + 3 * GAP, n * cell_h + GAP);
    let mut img = image::RgbImage::from_pixel(w, h, image::Rgb([40, 40, 40]));
    let mut rect = |x0: u32, y0: u32, rw: u32, rh: u32, c: [u8; 3]| {
        for y in y0..(y0 + rh).min(h) {
            for x in x0..(x0 + rw).min(w) {
                img.put_pixel(x, y, image::Rgb(c));
            }
        }
    };
    let mut blits = Vec::new();
    for (row, pair) in world.pairs.iter().take(n as usize).enumerate() {
        let y0 = GAP + row as u32 * cell_h;
        for (k, im) in pair.images.iter().enumerate() {
            let x0 = GAP + k as u32 * (side + GAP);
            let label = match pair.labels[k] {
                l if l > 0.5 => [60, 200, 80],
                l if l < 0.5 => [210, 60, 60],
                _ => [230, 170, 40],
            };
            let by = y0 + side + 2;
            rect(x0, by, side, BAR, label);
            rect(
                x0,
                by + BAR + 2,
                (im.alignment.score() * f64::from(side)).round() as u32,
                BAR,
                [70, 130, 230],
            );
            rect(
                x0,
                by + 2 * (BAR + 2),
                (im.detail * f64::from(side)).round() as u32,
                BAR,
                [170, 90, 220],
            );
            blits.push((x0, y0, &im.image));
        }
    }
    for (x0, y0, src) in blits {
        for (x, y, p) in src.enumerate_pixels() {
            for dy in 0..ZOOM {
                for dx in 0..ZOOM {
                    img.put_pixel(x0 + x * ZOOM + dx, y0 + y * ZOOM + dy, *p);
                }
            }
        }
    }
    png_bytes(&img)
}
