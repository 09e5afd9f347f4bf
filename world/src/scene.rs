//! Scenes: what a canvas shows (background colour, one object group at a position with a
//! count, or two objects in a spatial relation), where each object goes on the canvas, the
//! prompt that describes a scene, and a compact text code that identifies it.

use rand::Rng;

use crate::WorldError;
use crate::atlas::Atlas;
use crate::colour::Colour;

/// The most objects of one kind a scene holds.
pub const MAX_COUNT: u8 = 3;

/// Where a single object group sits on the canvas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Position {
    Center,
    Left,
    Right,
    Top,
    Bottom,
}

impl Position {
    /// Every position, the centre first.
    pub const ALL: [Position; 5] = [
        Position::Center,
        Position::Left,
        Position::Right,
        Position::Top,
        Position::Bottom,
    ];

    /// The word used in scene codes.
    pub fn name(self) -> &'static str {
        match self {
            Position::Center => "center",
            Position::Left => "left",
            Position::Right => "right",
            Position::Top => "top",
            Position::Bottom => "bottom",
        }
    }

    fn from_name(s: &str) -> Option<Position> {
        Position::ALL.into_iter().find(|p| p.name() == s)
    }
}

/// How the first object of a pair stands to the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Relation {
    /// First on the left half, second on the right half.
    LeftOf,
    /// First on the top half, second on the bottom half.
    Above,
}

impl Relation {
    /// Both relations.
    pub const ALL: [Relation; 2] = [Relation::LeftOf, Relation::Above];

    /// The word used in scene codes.
    pub fn name(self) -> &'static str {
        match self {
            Relation::LeftOf => "left-of",
            Relation::Above => "above",
        }
    }

    fn from_name(s: &str) -> Option<Relation> {
        Relation::ALL.into_iter().find(|r| r.name() == s)
    }

    /// The halves holding the first and the second object.
    pub fn halves(self) -> (Position, Position) {
        match self {
            Relation::LeftOf => (Position::Left, Position::Right),
            Relation::Above => (Position::Top, Position::Bottom),
        }
    }
}

/// An object class in natural colours or tinted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Entity {
    /// Class id in the world's [`Atlas`].
    pub object: usize,
    /// `None`: the emoji's own colours.
    pub tint: Option<Colour>,
}

/// What the canvas shows on its background.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// Nothing (never prompted; a parse may find it).
    Empty,
    /// `count` copies of one entity in one region.
    Single {
        entity: Entity,
        position: Position,
        count: u8,
    },
    /// Two entities, one per half.
    Pair {
        first: Entity,
        second: Entity,
        relation: Relation,
    },
}

/// A full scene: background colour and layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Scene {
    pub background: Colour,
    pub layout: Layout,
}

/// A square place for one sprite, in canvas pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Slot {
    /// Left edge.
    pub x: u32,
    /// Top edge.
    pub y: u32,
    /// Side.
    pub size: u32,
}

/// Where sprites go on a square canvas of a given size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    canvas: u32,
}

impl Geometry {
    /// The geometry of a `canvas`×`canvas` image (16 to 256 pixels).
    pub fn new(canvas: u32) -> Result<Geometry, WorldError> {
        if !(16..=256).contains(&canvas) {
            return Err(WorldError::Config(format!(
                "canvas must be in [16, 256] pixels, got {canvas}"
            )));
        }
        Ok(Geometry { canvas })
    }

    /// Side of the canvas in pixels.
    pub fn canvas(&self) -> u32 {
        self.canvas
    }

    /// The slots of `count` sprites in region `position`, spread along its long side.
    pub fn slots(&self, position: Position, count: u8) -> Vec<Slot> {
        let w = self.canvas;
        let h2 = w / 2;
        // (x, y, width, height) of the region
        let (rx, ry, rw, rh) = match position {
            Position::Center => (0, 0, w, w),
            Position::Left => (0, 0, h2, w),
            Position::Right => (h2, 0, w - h2, w),
            Position::Top => (0, 0, w, h2),
            Position::Bottom => (0, h2, w, w - h2),
        };
        let n = u32::from(count.max(1));
        let horizontal = rw >= rh;
        let (long, short) = if horizontal { (rw, rh) } else { (rh, rw) };
        let size = (w * 5 / 8)
            .min(short * 85 / 100)
            .min(long * 9 / 10 / n)
            .max(1);
        (0..n)
            .map(|i| {
                let along = ((2 * i + 1) * long / (2 * n)).saturating_sub(size / 2);
                let across = (short - size) / 2;
                if horizontal {
                    Slot {
                        x: rx + along,
                        y: ry + across,
                        size,
                    }
                } else {
                    Slot {
                        x: rx + across,
                        y: ry + along,
                        size,
                    }
                }
            })
            .collect()
    }

    /// Every sprite size any slot uses, largest first.
    pub fn sprite_sizes(&self) -> Vec<u32> {
        let mut sizes: Vec<u32> = Position::ALL
            .iter()
            .flat_map(|&p| (1..=MAX_COUNT).flat_map(move |n| self.slots(p, n)))
            .map(|s| s.size)
            .collect();
        sizes.sort_unstable_by(|a, b| b.cmp(a));
        sizes.dedup();
        sizes
    }
}

/// What prompts a world draws: how many background colours, how often a pair, how often a
/// tint. Smaller grammars are easier for a small base model to learn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grammar {
    /// Prompts use the first this many of [`Colour::BACKGROUNDS`] (1 to 8).
    pub backgrounds: usize,
    /// Share of prompts that show a pair of different objects.
    pub pair_share: f64,
    /// Share of objects drawn tinted rather than in their own colours.
    pub tint_share: f64,
}

impl Default for Grammar {
    /// Every background; a pair 45% of the time; half the objects tinted.
    fn default() -> Self {
        Grammar {
            backgrounds: Colour::BACKGROUNDS.len(),
            pair_share: 0.45,
            tint_share: 0.5,
        }
    }
}

impl Grammar {
    /// Checks the ranges.
    pub fn validate(&self) -> Result<(), WorldError> {
        if !(1..=Colour::BACKGROUNDS.len()).contains(&self.backgrounds) {
            return Err(WorldError::Config(format!(
                "backgrounds {} is outside 1..={}",
                self.backgrounds,
                Colour::BACKGROUNDS.len()
            )));
        }
        for (name, v) in [
            ("pair_share", self.pair_share),
            ("tint_share", self.tint_share),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(WorldError::Config(format!("{name} {v} is outside [0, 1]")));
            }
        }
        Ok(())
    }
}

impl Scene {
    /// Draws a prompt scene from `grammar`: a pair `pair_share` of the time, else one group
    /// (centred 40% of the time, with one, two or three copies); each object tinted
    /// `tint_share` of the time, never with the background's colour.
    pub fn sample(atlas: &Atlas, grammar: &Grammar, rng: &mut impl Rng) -> Scene {
        let backgrounds =
            &Colour::BACKGROUNDS[..grammar.backgrounds.clamp(1, Colour::BACKGROUNDS.len())];
        let background = backgrounds[rng.random_range(0..backgrounds.len())];
        let classes = atlas.classes().len();
        let entity = |rng: &mut dyn rand::RngCore, not: Option<usize>| {
            let object = loop {
                let o = rng.random_range(0..classes);
                if Some(o) != not {
                    break o;
                }
            };
            let tint = if rng.random_bool(1.0 - grammar.tint_share.clamp(0.0, 1.0)) {
                None
            } else {
                Some(random_tint(rng, background))
            };
            Entity { object, tint }
        };
        let layout = if classes > 1 && rng.random_bool(grammar.pair_share.clamp(0.0, 1.0)) {
            let first = entity(rng, None);
            let second = entity(rng, Some(first.object));
            Layout::Pair {
                first,
                second,
                relation: Relation::ALL[rng.random_range(0..2)],
            }
        } else {
            let e = entity(rng, None);
            let position = if rng.random_bool(0.4) {
                Position::Center
            } else {
                Position::ALL[rng.random_range(1..5)]
            };
            let count = match rng.random_range(0..20) {
                0..12 => 1,
                12..17 => 2,
                _ => 3,
            };
            Layout::Single {
                entity: e,
                position,
                count,
            }
        };
        Scene { background, layout }
    }

    /// The entity groups with their counts (none, one, or two).
    pub fn groups(&self) -> Vec<(Entity, u8)> {
        match self.layout {
            Layout::Empty => vec![],
            Layout::Single { entity, count, .. } => vec![(entity, count)],
            Layout::Pair { first, second, .. } => vec![(first, 1), (second, 1)],
        }
    }

    /// Every sprite of the scene and where it goes.
    pub fn placements(&self, geometry: &Geometry) -> Vec<(Entity, Slot)> {
        match self.layout {
            Layout::Empty => vec![],
            Layout::Single {
                entity,
                position,
                count,
            } => geometry
                .slots(position, count)
                .into_iter()
                .map(|s| (entity, s))
                .collect(),
            Layout::Pair {
                first,
                second,
                relation,
            } => {
                let (a, b) = relation.halves();
                vec![
                    (first, geometry.slots(a, 1)[0]),
                    (second, geometry.slots(b, 1)[0]),
                ]
            }
        }
    }

    /// The prompt describing the scene, e.g. "two blue tangerines at the top, on a white
    /// background" or "a dog face to the left of a purple bus, on a gray background".
    pub fn prompt(&self, atlas: &Atlas) -> String {
        let bg = self.background.name();
        let phrase = |e: Entity, n: u8| {
            let name = atlas.classes().get(e.object).map_or("object", |c| c.name);
            let noun = if n == 1 {
                name.to_owned()
            } else {
                plural(name)
            };
            let adjective = e.tint.map(|t| format!("{} ", t.name())).unwrap_or_default();
            let det = match n {
                1 if starts_with_vowel(&adjective, name) => "an".to_owned(),
                1 => "a".to_owned(),
                2 => "two".to_owned(),
                3 => "three".to_owned(),
                n => n.to_string(),
            };
            format!("{det} {adjective}{noun}")
        };
        match self.layout {
            Layout::Empty => format!("an empty {bg} background"),
            Layout::Single {
                entity,
                position,
                count,
            } => {
                let p = phrase(entity, count);
                match position {
                    Position::Center => format!("{p} on a {bg} background"),
                    Position::Left | Position::Right => {
                        format!("{p} on the {}, on a {bg} background", position.name())
                    }
                    Position::Top | Position::Bottom => {
                        format!("{p} at the {}, on a {bg} background", position.name())
                    }
                }
            }
            Layout::Pair {
                first,
                second,
                relation,
            } => {
                let rel = match relation {
                    Relation::LeftOf => "to the left of",
                    Relation::Above => "above",
                };
                format!(
                    "{} {rel} {}, on a {bg} background",
                    phrase(first, 1),
                    phrase(second, 1)
                )
            }
        }
    }

    /// A compact code naming the scene: `background;single;position;count;emoji;tint`,
    /// `background;pair;relation;emoji;tint;emoji;tint` or `background;empty`, with
    /// `natural` for an untinted object. [`Scene::from_code`] reads it back.
    pub fn code(&self, atlas: &Atlas) -> String {
        let bg = self.background.name();
        let ent = |e: Entity| {
            format!(
                "{};{}",
                atlas.classes().get(e.object).map_or("?", |c| c.emoji),
                e.tint.map_or("natural", Colour::name)
            )
        };
        match self.layout {
            Layout::Empty => format!("{bg};empty"),
            Layout::Single {
                entity,
                position,
                count,
            } => format!("{bg};single;{};{count};{}", position.name(), ent(entity)),
            Layout::Pair {
                first,
                second,
                relation,
            } => format!(
                "{bg};pair;{};{};{}",
                relation.name(),
                ent(first),
                ent(second)
            ),
        }
    }

    /// Reads a [`Scene::code`] back against the world's atlas.
    pub fn from_code(atlas: &Atlas, code: &str) -> Result<Scene, WorldError> {
        let bad = |why: &str| WorldError::SceneCode {
            code: code.to_owned(),
            message: why.to_owned(),
        };
        let f: Vec<&str> = code.split(';').collect();
        let background = Colour::from_name(f[0]).ok_or_else(|| bad("unknown background colour"))?;
        let entity = |emoji: &str, tint: &str| -> Result<Entity, WorldError> {
            let object = atlas
                .class_of(emoji)
                .ok_or_else(|| bad(&format!("object {emoji} is not in this world")))?;
            let tint = if tint == "natural" {
                None
            } else {
                Some(Colour::from_name(tint).ok_or_else(|| bad("unknown tint"))?)
            };
            Ok(Entity { object, tint })
        };
        let layout = match f.as_slice() {
            [_, "empty"] => Layout::Empty,
            [_, "single", pos, count, emoji, tint] => {
                let position = Position::from_name(pos).ok_or_else(|| bad("unknown position"))?;
                let count: u8 = count.parse().map_err(|_| bad("count is not a number"))?;
                if !(1..=MAX_COUNT).contains(&count) {
                    return Err(bad("count out of range"));
                }
                Layout::Single {
                    entity: entity(emoji, tint)?,
                    position,
                    count,
                }
            }
            [_, "pair", rel, e1, t1, e2, t2] => Layout::Pair {
                first: entity(e1, t1)?,
                second: entity(e2, t2)?,
                relation: Relation::from_name(rel).ok_or_else(|| bad("unknown relation"))?,
            },
            _ => {
                return Err(bad(
                    "expected `bg;empty`, `bg;single;position;count;emoji;tint` or `bg;pair;relation;emoji;tint;emoji;tint`",
                ));
            }
        };
        Ok(Scene { background, layout })
    }
}

/// A tint other than the background's colour.
pub(crate) fn random_tint(rng: &mut (impl Rng + ?Sized), background: Colour) -> Colour {
    loop {
        let t = Colour::TINTS[rng.random_range(0..Colour::TINTS.len())];
        if t != background {
            return t;
        }
    }
}

fn starts_with_vowel(adjective: &str, name: &str) -> bool {
    let first = if adjective.is_empty() {
        name
    } else {
        adjective
    };
    first.starts_with(['a', 'e', 'i', 'o', 'u'])
}

/// English plural of the last word of a name ("dog face" → "dog faces", "peach" → "peaches").
fn plural(name: &str) -> String {
    let (head, last) = name.rsplit_once(' ').map_or(("", name), |(h, l)| (h, l));
    let last = if last.ends_with('s')
        || last.ends_with('x')
        || last.ends_with("ch")
        || last.ends_with("sh")
    {
        format!("{last}es")
    } else if last.ends_with('y')
        && !last.ends_with("ay")
        && !last.ends_with("ey")
        && !last.ends_with("oy")
    {
        format!("{}ies", &last[..last.len() - 1])
    } else {
        format!("{last}s")
    };
    if head.is_empty() {
        last
    } else {
        format!("{head} {last}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn slots_stay_on_the_canvas_and_never_overlap() {
        for canvas in [32, 48, 64] {
            let g = Geometry::new(canvas).unwrap();
            for p in Position::ALL {
                for n in 1..=MAX_COUNT {
                    let slots = g.slots(p, n);
                    assert_eq!(slots.len(), usize::from(n));
                    for (i, a) in slots.iter().enumerate() {
                        assert!(
                            a.x + a.size <= canvas && a.y + a.size <= canvas,
                            "{p:?} {n} {a:?}"
                        );
                        for b in &slots[i + 1..] {
                            let apart = a.x + a.size <= b.x
                                || b.x + b.size <= a.x
                                || a.y + a.size <= b.y
                                || b.y + b.size <= a.y;
                            assert!(apart, "{p:?} {n}: {a:?} {b:?}");
                        }
                    }
                }
            }
        }
        assert_eq!(
            Geometry::new(32).unwrap().sprite_sizes(),
            vec![20, 14, 13, 9]
        );
        assert!(Geometry::new(8).is_err());
    }

    #[test]
    fn codes_round_trip_and_prompts_read_well() {
        let atlas = Atlas::sample(10, 3, 32).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for _ in 0..300 {
            let s = Scene::sample(&atlas, &Grammar::default(), &mut rng);
            assert_eq!(Scene::from_code(&atlas, &s.code(&atlas)).unwrap(), s);
            let p = s.prompt(&atlas);
            assert!(
                p.ends_with(&format!("on a {} background", s.background.name())),
                "{p}"
            );
            for (e, _) in s.groups() {
                assert_ne!(e.tint, Some(s.background));
            }
        }
        assert_eq!(plural("peach"), "peaches");
        assert_eq!(plural("dog face"), "dog faces");
        assert_eq!(plural("cherry"), "cherries");
        assert_eq!(plural("key"), "keys");
    }

    #[test]
    fn bad_codes_name_the_problem() {
        let atlas = Atlas::sample(10, 3, 32).unwrap();
        for code in [
            "mauve;empty",
            "blue;single;left;9;🍎;natural",
            "blue;pair;left-of",
            "blue;single;middle;1;🍎;natural",
        ] {
            match Scene::from_code(&atlas, code) {
                Err(WorldError::SceneCode { code: c, .. }) => assert_eq!(c, code),
                other => panic!("{code}: {other:?}"),
            }
        }
    }
}
