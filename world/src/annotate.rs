//! Differently flawed renderers (the analogue of Pick-a-Pic's several generators), the layout
//! errors they make, and the simulated annotator whose generic preference blends prompt
//! alignment with detail quality, plus noise.

use rand::Rng;
use rand_distr::{Distribution, Normal};

use crate::atlas::Atlas;
use crate::colour::Colour;
use crate::render::{Flaw, FlawKind};
use crate::scene::{Layout, MAX_COUNT, Position, Relation, Scene, random_tint};

/// A mistake in what is drawn (as opposed to how it is drawn).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LayoutError {
    /// Another object in place of a prompted one.
    Object,
    /// Another tint, natural colours for a tint, or another background colour.
    Colour,
    /// Another position, or a pair swapped or stacked the other way.
    Position,
    /// Another number of copies (single groups only).
    Count,
}

impl LayoutError {
    /// The name written in tables.
    pub fn name(self) -> &'static str {
        match self {
            LayoutError::Object => "object",
            LayoutError::Colour => "colour",
            LayoutError::Position => "position",
            LayoutError::Count => "count",
        }
    }

    /// `scene` with this error drawn in; `None` if the error does not apply (count on a pair).
    pub fn apply(self, atlas: &Atlas, scene: &Scene, rng: &mut impl Rng) -> Option<Scene> {
        let mut s = *scene;
        let classes = atlas.classes().len();
        let other_object = |rng: &mut dyn rand::RngCore, not: &[usize]| loop {
            let o = rng.random_range(0..classes);
            if !not.contains(&o) {
                break o;
            }
        };
        match (self, &mut s.layout) {
            (_, Layout::Empty) | (LayoutError::Count, Layout::Pair { .. }) => return None,
            (LayoutError::Object, Layout::Single { entity, .. }) => {
                entity.object = other_object(rng, &[entity.object])
            }
            (LayoutError::Object, Layout::Pair { first, second, .. }) => {
                let not = [first.object, second.object];
                let target = if rng.random_bool(0.5) { first } else { second };
                target.object = other_object(rng, &not);
            }
            (LayoutError::Colour, layout) => {
                if rng.random_bool(0.5) {
                    let tints: Vec<Colour> =
                        scene.groups().iter().filter_map(|(e, _)| e.tint).collect();
                    let options: Vec<Colour> = Colour::BACKGROUNDS
                        .into_iter()
                        .filter(|c| *c != scene.background && !tints.contains(c))
                        .collect();
                    s.background = options[rng.random_range(0..options.len())];
                } else {
                    let entity = match layout {
                        Layout::Single { entity, .. } => entity,
                        Layout::Pair { first, second, .. } => {
                            if rng.random_bool(0.5) {
                                first
                            } else {
                                second
                            }
                        }
                        Layout::Empty => return None,
                    };
                    entity.tint = loop {
                        let t = if rng.random_bool(0.25) {
                            None
                        } else {
                            Some(random_tint(rng, scene.background))
                        };
                        if t != entity.tint {
                            break t;
                        }
                    };
                }
            }
            (LayoutError::Position, Layout::Single { position, .. }) => {
                *position = loop {
                    let p = Position::ALL[rng.random_range(0..Position::ALL.len())];
                    if p != *position {
                        break p;
                    }
                }
            }
            (
                LayoutError::Position,
                Layout::Pair {
                    first,
                    second,
                    relation,
                },
            ) => {
                if rng.random_bool(0.5) {
                    std::mem::swap(first, second);
                } else {
                    *relation = match relation {
                        Relation::LeftOf => Relation::Above,
                        Relation::Above => Relation::LeftOf,
                    };
                }
            }
            (LayoutError::Count, Layout::Single { count, .. }) => {
                *count = loop {
                    let n = rng.random_range(1..=MAX_COUNT);
                    if n != *count {
                        break n;
                    }
                }
            }
        }
        Some(s)
    }
}

/// A generator profile: how often it gets the layout wrong and which detail flaws it has.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Renderer {
    /// Written as `model_0` / `model_1` in the pairs table.
    pub name: &'static str,
    /// Chance that an image gets one layout error.
    pub layout_error_rate: f64,
    /// Chance that an image gets a detail flaw.
    pub flaw_rate: f64,
    /// The flaws it makes, one drawn uniformly.
    pub flaws: &'static [FlawKind],
    /// Flaw strength drawn uniformly in this range.
    pub strength: (f32, f32),
}

/// The renderers of the default world: one sloppy about layout but crisp, five careful about
/// layout but each with its own kind of detail flaw, and one middling at everything.
pub const RENDERERS: [Renderer; 7] = [
    Renderer {
        name: "sketchy-layout",
        layout_error_rate: 0.7,
        flaw_rate: 0.25,
        flaws: &FlawKind::ALL,
        strength: (0.05, 0.3),
    },
    Renderer {
        name: "soft-focus",
        layout_error_rate: 0.15,
        flaw_rate: 0.9,
        flaws: &[FlawKind::Blur],
        strength: (0.2, 1.0),
    },
    Renderer {
        name: "grainy",
        layout_error_rate: 0.15,
        flaw_rate: 0.9,
        flaws: &[FlawKind::Noise],
        strength: (0.2, 1.0),
    },
    Renderer {
        name: "blocky",
        layout_error_rate: 0.2,
        flaw_rate: 0.9,
        flaws: &[FlawKind::Blocking],
        strength: (0.2, 1.0),
    },
    Renderer {
        name: "bleeding",
        layout_error_rate: 0.2,
        flaw_rate: 0.9,
        flaws: &[FlawKind::ColourBleed],
        strength: (0.2, 1.0),
    },
    Renderer {
        name: "aliased",
        layout_error_rate: 0.2,
        flaw_rate: 0.9,
        flaws: &[FlawKind::Jagged],
        strength: (0.4, 1.0),
    },
    Renderer {
        name: "middling",
        layout_error_rate: 0.4,
        flaw_rate: 0.6,
        flaws: &FlawKind::ALL,
        strength: (0.1, 0.7),
    },
];

/// What a renderer decided to draw for a prompted scene.
#[derive(Debug, Clone, PartialEq)]
pub struct Draw {
    /// The scene actually drawn.
    pub scene: Scene,
    pub layout_error: Option<LayoutError>,
    pub flaw: Option<Flaw>,
}

impl Renderer {
    /// Decides the layout error and detail flaw of one image of `prompted`.
    pub fn draw(&self, atlas: &Atlas, prompted: &Scene, rng: &mut impl Rng) -> Draw {
        let mut scene = *prompted;
        let mut layout_error = None;
        if rng.random_bool(self.layout_error_rate) {
            let kinds: &[LayoutError] = match prompted.layout {
                Layout::Pair { .. } => &[
                    LayoutError::Object,
                    LayoutError::Colour,
                    LayoutError::Position,
                ],
                _ => &[
                    LayoutError::Object,
                    LayoutError::Colour,
                    LayoutError::Position,
                    LayoutError::Count,
                ],
            };
            let kind = kinds[rng.random_range(0..kinds.len())];
            if let Some(s) = kind.apply(atlas, prompted, rng) {
                scene = s;
                layout_error = Some(kind);
            }
        }
        let flaw = rng.random_bool(self.flaw_rate).then(|| Flaw {
            kind: self.flaws[rng.random_range(0..self.flaws.len())],
            strength: rng.random_range(self.strength.0..=self.strength.1),
        });
        Draw {
            scene,
            layout_error,
            flaw,
        }
    }
}

/// The simulated annotator of generic preferences.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Annotator {
    /// Weight of prompt alignment (share of object, colour, position, count right).
    pub alignment_weight: f64,
    /// Weight of detail quality (the oracle's, in [0, 1]).
    pub detail_weight: f64,
    /// Standard deviation of the Gaussian noise added to each image's utility.
    pub noise: f64,
    /// Utilities closer than this are a tie (labels 0.5 / 0.5).
    pub tie_margin: f64,
}

impl Default for Annotator {
    fn default() -> Self {
        Annotator {
            alignment_weight: 1.0,
            detail_weight: 0.5,
            noise: 0.1,
            tie_margin: 0.03,
        }
    }
}

impl Annotator {
    /// The noisy utility the annotator sees in one image.
    pub fn utility(&self, alignment: f64, detail: f64, rng: &mut impl Rng) -> f64 {
        let noise = Normal::new(0.0, self.noise.max(0.0)).map_or(0.0, |n| n.sample(rng));
        self.noiseless(alignment, detail) + noise
    }

    /// The utility without the annotator's noise: what its labels estimate.
    pub fn noiseless(&self, alignment: f64, detail: f64) -> f64 {
        self.alignment_weight * alignment + self.detail_weight * detail
    }

    /// Pick-a-Pic labels `[label_0, label_1]`: 1/0, 0/1, or 0.5/0.5 for a tie.
    pub fn label(&self, u0: f64, u1: f64) -> [f64; 2] {
        if (u0 - u1).abs() < self.tie_margin {
            [0.5, 0.5]
        } else if u0 > u1 {
            [1.0, 0.0]
        } else {
            [0.0, 1.0]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle::compare;
    use crate::scene::Grammar;
    use rand::SeedableRng;

    #[test]
    fn each_layout_error_breaks_its_own_part_of_alignment() {
        let atlas = Atlas::sample(10, 5, 32).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for _ in 0..200 {
            let s = Scene::sample(&atlas, &Grammar::default(), &mut rng);
            for kind in [
                LayoutError::Object,
                LayoutError::Colour,
                LayoutError::Position,
                LayoutError::Count,
            ] {
                let Some(bad) = kind.apply(&atlas, &s, &mut rng) else {
                    assert!(kind == LayoutError::Count && matches!(s.layout, Layout::Pair { .. }));
                    continue;
                };
                let a = compare(&s, &bad);
                let broken = match kind {
                    LayoutError::Object => !a.object,
                    LayoutError::Colour => !a.colour,
                    LayoutError::Position => !a.position,
                    LayoutError::Count => !a.count,
                };
                assert!(
                    broken,
                    "{kind:?}: {} -> {}",
                    s.code(&atlas),
                    bad.code(&atlas)
                );
                for (e, _) in bad.groups() {
                    assert_ne!(
                        e.tint,
                        Some(bad.background),
                        "{kind:?}: {}",
                        bad.code(&atlas)
                    );
                }
            }
        }
    }

    #[test]
    fn labels_follow_utilities_with_ties() {
        let a = Annotator::default();
        assert_eq!(a.label(1.0, 0.5), [1.0, 0.0]);
        assert_eq!(a.label(0.2, 0.9), [0.0, 1.0]);
        assert_eq!(a.label(0.5, 0.51), [0.5, 0.5]);
    }
}
