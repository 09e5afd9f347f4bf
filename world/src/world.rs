//! Building a world from a seed: the atlas, a training prompt set and a disjoint validation
//! set, and generic preference pairs on the training prompts with the ground truth of every
//! image (what was drawn, how, its alignment and detail quality, the annotator's utility).

use std::collections::HashSet;

use crate::WorldError;
use crate::annotate::{Annotator, LayoutError, RENDERERS, Renderer};
use crate::atlas::Atlas;
use crate::oracle::{Alignment, compare, high_pass_distance, quality_from_high_pass};
use crate::render::{Flaw, render, render_flawed};
use crate::rng::{Stream, stream};
use crate::scene::{Grammar, Scene};

/// Everything that determines a world.
#[derive(Debug, Clone, PartialEq)]
pub struct WorldConfig {
    pub seed: u64,
    /// Canvas side in pixels.
    pub canvas: u32,
    /// Number of object classes.
    pub objects: usize,
    /// Training prompts (SPO's 4k prompts analogue).
    pub train_prompts: usize,
    /// Validation prompts, disjoint from training (Pick-a-Pic validation_unique analogue).
    pub validation_prompts: usize,
    /// Preference pairs per training prompt (Pick-a-Pic's `num_example_per_prompt`).
    pub pairs_per_prompt: usize,
    /// What the prompts may ask for.
    pub grammar: Grammar,
    pub annotator: Annotator,
}

impl Default for WorldConfig {
    fn default() -> Self {
        WorldConfig {
            seed: 0,
            canvas: 32,
            objects: 24,
            train_prompts: 4000,
            validation_prompts: 500,
            pairs_per_prompt: 1,
            grammar: Grammar::default(),
            annotator: Annotator::default(),
        }
    }
}

/// A prompt and the scene it describes.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptRecord {
    pub scene: Scene,
    pub prompt: String,
}

/// One image of a pair and its ground truth.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRecord {
    pub renderer: &'static str,
    /// The scene actually drawn.
    pub scene: Scene,
    pub layout_error: Option<LayoutError>,
    pub flaw: Option<Flaw>,
    pub image: image::RgbImage,
    /// Alignment of `scene` to the prompted scene.
    pub alignment: Alignment,
    /// Graded detail quality against the clean render of `scene` (the oracle's measure).
    pub detail: f64,
    /// The annotator's noisy utility.
    pub utility: f64,
}

/// A generic preference pair on a training prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct PairRecord {
    /// Index into [`World::train`].
    pub prompt: usize,
    pub images: [ImageRecord; 2],
    /// `[label_0, label_1]` as in Pick-a-Pic.
    pub labels: [f64; 2],
}

/// How often generic labels disagree with pure detail-quality labels (Figure 1's premise).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Disagreement {
    /// Pairs with a strict generic label and a strict detail-quality order.
    pub compared: usize,
    /// Of those, pairs whose generic winner has the worse details.
    pub disagree: usize,
}

impl Disagreement {
    /// `disagree / compared` (0 when nothing was compared).
    pub fn share(&self) -> f64 {
        if self.compared == 0 {
            0.0
        } else {
            self.disagree as f64 / self.compared as f64
        }
    }
}

/// A built world.
#[derive(Debug, Clone)]
pub struct World {
    pub config: WorldConfig,
    pub atlas: Atlas,
    pub train: Vec<PromptRecord>,
    pub validation: Vec<PromptRecord>,
    pub pairs: Vec<PairRecord>,
}

impl World {
    /// Builds the world `config` describes; the same config always gives the same world.
    pub fn build(config: &WorldConfig) -> Result<World, WorldError> {
        config.grammar.validate()?;
        let atlas = Atlas::sample(config.objects, config.seed, config.canvas)?;
        let (train, validation) = prompt_sets(&atlas, config)?;
        let mut pairs = Vec::with_capacity(train.len() * config.pairs_per_prompt);
        for (p, rec) in train.iter().enumerate() {
            for k in 0..config.pairs_per_prompt {
                let index = (p * config.pairs_per_prompt + k) as u64;
                pairs.push(make_pair(&atlas, config, p, &rec.scene, index)?);
            }
        }
        Ok(World {
            config: config.clone(),
            atlas,
            train,
            validation,
            pairs,
        })
    }

    /// Share of pairs where the generic label prefers the image with the worse details.
    pub fn disagreement(&self) -> Disagreement {
        let mut d = Disagreement {
            compared: 0,
            disagree: 0,
        };
        for pair in &self.pairs {
            let [q0, q1] = [pair.images[0].detail, pair.images[1].detail];
            if pair.labels[0] == 0.5 || (q0 - q1).abs() < 1e-9 {
                continue;
            }
            d.compared += 1;
            if (pair.labels[0] > pair.labels[1]) != (q0 > q1) {
                d.disagree += 1;
            }
        }
        d
    }
}

/// Draws distinct prompts until both sets are full: training first, then validation.
fn prompt_sets(
    atlas: &Atlas,
    config: &WorldConfig,
) -> Result<(Vec<PromptRecord>, Vec<PromptRecord>), WorldError> {
    let want = config.train_prompts + config.validation_prompts;
    let mut rng = stream(config.seed, Stream::Prompts, 0);
    let mut seen = HashSet::new();
    let mut all = Vec::with_capacity(want);
    let mut tries = 0usize;
    while all.len() < want {
        tries += 1;
        if tries > 50 * want + 1000 {
            return Err(WorldError::Config(format!(
                "only {} distinct prompts found for {want} wanted: use more objects or fewer prompts",
                all.len()
            )));
        }
        let scene = Scene::sample(atlas, &config.grammar, &mut rng);
        let prompt = scene.prompt(atlas);
        if seen.insert(prompt.clone()) {
            all.push(PromptRecord { scene, prompt });
        }
    }
    let validation = all.split_off(config.train_prompts);
    Ok((all, validation))
}

fn make_pair(
    atlas: &Atlas,
    config: &WorldConfig,
    prompt: usize,
    prompted: &Scene,
    index: u64,
) -> Result<PairRecord, WorldError> {
    let mut rng = stream(config.seed, Stream::Annotate, index);
    let r0 = rand::Rng::random_range(&mut rng, 0..RENDERERS.len());
    let r1 = (r0 + rand::Rng::random_range(&mut rng, 1..RENDERERS.len())) % RENDERERS.len();
    let im0 = make_image(atlas, config, &RENDERERS[r0], prompted, 2 * index, &mut rng)?;
    let im1 = make_image(
        atlas,
        config,
        &RENDERERS[r1],
        prompted,
        2 * index + 1,
        &mut rng,
    )?;
    let labels = config.annotator.label(im0.utility, im1.utility);
    Ok(PairRecord {
        prompt,
        images: [im0, im1],
        labels,
    })
}

fn make_image(
    atlas: &Atlas,
    config: &WorldConfig,
    renderer: &Renderer,
    prompted: &Scene,
    index: u64,
    annotator_rng: &mut impl rand::Rng,
) -> Result<ImageRecord, WorldError> {
    let mut rng = stream(config.seed, Stream::Render, index);
    let draw = renderer.draw(atlas, prompted, &mut rng);
    let image = render_flawed(atlas, &draw.scene, draw.flaw, &mut rng)?;
    let detail = quality_from_high_pass(high_pass_distance(&image, &render(atlas, &draw.scene)?)?);
    let alignment = compare(prompted, &draw.scene);
    let utility = config
        .annotator
        .utility(alignment.score(), detail, annotator_rng);
    Ok(ImageRecord {
        renderer: renderer.name,
        scene: draw.scene,
        layout_error: draw.layout_error,
        flaw: draw.flaw,
        image,
        alignment,
        detail,
        utility,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> WorldConfig {
        WorldConfig {
            train_prompts: 300,
            validation_prompts: 60,
            ..WorldConfig::default()
        }
    }

    #[test]
    fn the_same_seed_builds_the_same_world_and_another_seed_another() {
        let a = World::build(&small()).unwrap();
        let b = World::build(&small()).unwrap();
        assert_eq!(a.train, b.train);
        assert_eq!(a.pairs, b.pairs);
        let c = World::build(&WorldConfig { seed: 1, ..small() }).unwrap();
        assert_ne!(a.train, c.train);
    }

    #[test]
    fn validation_prompts_are_disjoint_from_training_prompts() {
        let w = World::build(&small()).unwrap();
        assert_eq!(
            (w.train.len(), w.validation.len(), w.pairs.len()),
            (300, 60, 300)
        );
        let train: HashSet<&str> = w.train.iter().map(|p| p.prompt.as_str()).collect();
        assert_eq!(train.len(), 300);
        assert!(
            w.validation
                .iter()
                .all(|p| !train.contains(p.prompt.as_str()))
        );
    }

    #[test]
    fn generic_labels_disagree_with_detail_labels_on_a_real_minority_of_pairs() {
        let w = World::build(&WorldConfig::default()).unwrap();
        let d = w.disagreement();
        assert!(d.compared > 2000, "{d:?}");
        assert!(
            (0.10..=0.50).contains(&d.share()),
            "{d:?} share {}",
            d.share()
        );
        // Both parts matter: labels follow alignment and detail more often than chance.
        let follows = |f: &dyn Fn(&ImageRecord) -> f64| {
            w.pairs
                .iter()
                .filter(|p| p.labels[0] != 0.5 && (f(&p.images[0]) - f(&p.images[1])).abs() > 1e-9)
                .map(|p| {
                    ((p.labels[0] > 0.5) == (f(&p.images[0]) > f(&p.images[1]))) as usize as f64
                })
                .sum::<f64>()
        };
        let n = |f: &dyn Fn(&ImageRecord) -> f64| {
            w.pairs
                .iter()
                .filter(|p| p.labels[0] != 0.5 && (f(&p.images[0]) - f(&p.images[1])).abs() > 1e-9)
                .count() as f64
        };
        let align = |i: &ImageRecord| i.alignment.score();
        assert!(follows(&align) / n(&align) > 0.7);
        let ties = w.pairs.iter().filter(|p| p.labels[0] == 0.5).count();
        assert!(ties > 0 && ties < w.pairs.len() / 5, "{ties} ties");
    }

    /// Heavy blocking and bleeding shift colours enough that the parse sometimes picks a
    /// neighbouring tint (orange for yellow) or a similar object: about 2% of images.
    #[test]
    fn the_oracles_recover_the_ground_truth_of_flawed_images() {
        let w = World::build(&small()).unwrap();
        let (mut same_scene, mut same_alignment, mut n) = (0, 0, 0);
        for pair in &w.pairs {
            let prompted = &w.train[pair.prompt].scene;
            for im in &pair.images {
                let d = crate::oracle::detail_quality(&w.atlas, &im.image).unwrap();
                n += 1;
                same_scene += usize::from(d.observed == im.scene);
                same_alignment += usize::from(compare(prompted, &d.observed) == im.alignment);
                // Where the parse finds the true scene, the graded detail is the truth's.
                if d.observed == im.scene {
                    assert!(
                        (d.quality - im.detail).abs() < 1e-9,
                        "{} vs {}",
                        d.quality,
                        im.detail
                    );
                }
            }
        }
        assert!(same_scene as f64 > 0.95 * n as f64, "{same_scene}/{n}");
        assert!(
            same_alignment as f64 > 0.95 * n as f64,
            "{same_alignment}/{n}"
        );
    }

    #[test]
    fn too_many_prompts_for_the_world_is_an_error() {
        let c = WorldConfig {
            objects: 2,
            train_prompts: 100_000,
            ..WorldConfig::default()
        };
        assert!(matches!(World::build(&c), Err(WorldError::Config(_))));
    }
}
