//! Times building the default world and judging its images with the oracles.
//!
//! `cargo run --release -p spo-world --example bench_world`

use std::time::Instant;

use spo_world::{World, WorldConfig, alignment, detail_quality};

fn main() -> Result<(), spo_world::WorldError> {
    let config = WorldConfig::default();
    let t = Instant::now();
    let world = World::build(&config)?;
    let build = t.elapsed().as_secs_f64();
    let images: Vec<_> = world
        .pairs
        .iter()
        .flat_map(|p| p.images.iter().map(move |im| (p.prompt, im)))
        .take(1000)
        .collect();
    let t = Instant::now();
    let mut agree = 0;
    for (prompt, im) in &images {
        let a = alignment(&world.atlas, &world.train[*prompt].scene, &im.image)?;
        agree += usize::from(a == im.alignment);
    }
    let align = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut sum = 0.0;
    for (_, im) in &images {
        sum += detail_quality(&world.atlas, &im.image)?.quality;
    }
    let detail = t.elapsed().as_secs_f64();
    println!(
        "World::build (default: {} train + {} validation prompts, {} pairs): {build:.3} s",
        world.train.len(),
        world.validation.len(),
        world.pairs.len()
    );
    println!(
        "oracle alignment: {:.2} ms/image ({agree}/{} agree with the truth)",
        1e3 * align / images.len() as f64,
        images.len()
    );
    println!(
        "oracle detail quality: {:.2} ms/image (mean {:.3})",
        1e3 * detail / images.len() as f64,
        sum / images.len() as f64
    );
    println!(
        "generic vs detail disagreement: {:.3}",
        world.disagreement().share()
    );
    Ok(())
}
