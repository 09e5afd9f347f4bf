//! The emoji atlas: object classes taken from the Twemoji artwork embedded in the binary
//! (`twemoji-assets`, CC-BY-4.0) and named by `emojis` (Unicode CLDR names), each
//! pre-scaled to every sprite size the canvas geometry uses, in its natural colours and in
//! every tint, both area-averaged (clean) and nearest-sampled with hard alpha (jagged).

use std::collections::HashMap;

use crate::WorldError;
use crate::colour::Colour;
use crate::scene::Geometry;

/// One kind of object a scene can hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectClass {
    /// The emoji, as Unicode text (its identity in scene codes).
    pub emoji: &'static str,
    /// Its CLDR name, used in prompts ("dog face", "tangerine").
    pub name: &'static str,
}

/// How a sprite was resampled from the 72×72 artwork.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sampling {
    /// Area-averaged colour and alpha: the clean renderer.
    Smooth,
    /// Nearest-neighbour colour and alpha thresholded at one half: jagged edges.
    Aliased,
}

/// A square sprite: premultiplied RGB and alpha in [0, 1], row-major.
#[derive(Debug, Clone)]
pub struct Sprite {
    /// Side in pixels.
    pub size: u32,
    /// Premultiplied colour per pixel.
    pub rgb: Vec<[f32; 3]>,
    /// Coverage per pixel.
    pub alpha: Vec<f32>,
    /// Σ |rgb|², Σ alpha·rgb and Σ alpha²: what the oracle's error expansion needs.
    pub(crate) moments: Moments,
}

/// Sums over a sprite's pixels that let the oracle score it on any background in one pass.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Moments {
    pub m2: f32,
    pub am: [f32; 3],
    pub a2: f32,
}

impl Sprite {
    fn new(size: u32, rgb: Vec<[f32; 3]>, alpha: Vec<f32>) -> Sprite {
        let mut m = Moments::default();
        for (c, &a) in rgb.iter().zip(&alpha) {
            m.m2 += c[0] * c[0] + c[1] * c[1] + c[2] * c[2];
            for (acc, v) in m.am.iter_mut().zip(c) {
                *acc += a * v;
            }
            m.a2 += a * a;
        }
        Sprite {
            size,
            rgb,
            alpha,
            moments: m,
        }
    }
}

/// Words that would clash with a tint in a prompt ("a blue red apple").
const COLOUR_WORDS: [&str; 13] = [
    "red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white",
    "gray", "grey", "light",
];

/// Every emoji usable as an object, in the `emojis` crate's (CLDR) order: single-character
/// emoji from the animal, food, travel, activity and object groups with a short plain name
/// that names no colour, and with Twemoji artwork.
pub fn candidates() -> Vec<ObjectClass> {
    use emojis::Group;
    emojis::iter()
        .filter(|e| {
            matches!(
                e.group(),
                Group::AnimalsAndNature
                    | Group::FoodAndDrink
                    | Group::TravelAndPlaces
                    | Group::Activities
                    | Group::Objects
            )
        })
        .filter(|e| {
            e.skin_tone().is_none() && e.as_str().trim_end_matches('\u{fe0f}').chars().count() == 1
        })
        .filter(|e| {
            let name = e.name();
            let words: Vec<&str> = name.split(' ').collect();
            words.len() <= 2
                && name.bytes().all(|b| b.is_ascii_lowercase() || b == b' ')
                && !words.iter().any(|w| COLOUR_WORDS.contains(w))
        })
        .filter(|e| artwork(e.as_str()).is_some())
        .map(|e| ObjectClass {
            emoji: e.as_str(),
            name: e.name(),
        })
        .collect()
}

/// The embedded 72×72 PNG of an emoji, with or without its variation selector.
fn artwork(emoji: &str) -> Option<&'static [u8]> {
    use twemoji_assets::png::PngTwemojiAsset;
    let asset = PngTwemojiAsset::from_emoji(emoji)
        .or_else(|| PngTwemojiAsset::from_emoji(emoji.trim_end_matches('\u{fe0f}')))?;
    Some(asset.data.0)
}

/// The object classes of one world and their sprites at every size its canvas uses.
#[derive(Debug, Clone)]
pub struct Atlas {
    geometry: Geometry,
    classes: Vec<ObjectClass>,
    sprites: HashMap<SpriteKey, Sprite>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct SpriteKey {
    class: usize,
    size: u32,
    tint: Option<Colour>,
    sampling: Sampling,
}

impl Atlas {
    /// `count` classes chosen from [`candidates`] by `seed`, kept in candidate order.
    pub fn sample(count: usize, seed: u64, canvas: u32) -> Result<Atlas, WorldError> {
        use rand::seq::index::sample;
        let all = candidates();
        if count < 2 || count > all.len() {
            return Err(WorldError::Config(format!(
                "objects must be in [2, {}], got {count}",
                all.len()
            )));
        }
        let mut rng = crate::rng::stream(seed, crate::rng::Stream::Atlas, 0);
        let mut picked: Vec<usize> = sample(&mut rng, all.len(), count).into_vec();
        picked.sort_unstable();
        let emojis: Vec<&str> = picked.iter().map(|&i| all[i].emoji).collect();
        Atlas::from_emojis(&emojis, canvas)
    }

    /// An atlas of exactly these emoji (as written in an `objects` table), in this order.
    pub fn from_emojis(emojis: &[&str], canvas: u32) -> Result<Atlas, WorldError> {
        let geometry = Geometry::new(canvas)?;
        let mut classes = Vec::with_capacity(emojis.len());
        for &e in emojis {
            let found = emojis::get(e).ok_or_else(|| WorldError::UnknownObject(e.to_owned()))?;
            if classes
                .iter()
                .any(|c: &ObjectClass| c.emoji == found.as_str())
            {
                return Err(WorldError::Config(format!("object {e} is listed twice")));
            }
            classes.push(ObjectClass {
                emoji: found.as_str(),
                name: found.name(),
            });
        }
        if classes.len() < 2 {
            return Err(WorldError::Config(
                "a world needs at least two objects".into(),
            ));
        }
        let mut sprites = HashMap::new();
        for (class, c) in classes.iter().enumerate() {
            let png =
                artwork(c.emoji).ok_or_else(|| WorldError::UnknownObject(c.emoji.to_owned()))?;
            let art = image::load_from_memory_with_format(png, image::ImageFormat::Png)
                .map_err(|e| WorldError::Artwork(format!("{}: {e}", c.emoji)))?
                .to_rgba8();
            for size in geometry.sprite_sizes() {
                for sampling in [Sampling::Smooth, Sampling::Aliased] {
                    let natural = resample(&art, size, sampling);
                    for tint in Colour::TINTS {
                        sprites.insert(
                            SpriteKey {
                                class,
                                size,
                                tint: Some(tint),
                                sampling,
                            },
                            tinted(&natural, tint),
                        );
                    }
                    sprites.insert(
                        SpriteKey {
                            class,
                            size,
                            tint: None,
                            sampling,
                        },
                        natural,
                    );
                }
            }
        }
        Ok(Atlas {
            geometry,
            classes,
            sprites,
        })
    }

    /// The canvas geometry (size and slots).
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// The object classes, indexed by class id.
    pub fn classes(&self) -> &[ObjectClass] {
        &self.classes
    }

    /// The class id of an emoji, if this world has it.
    pub fn class_of(&self, emoji: &str) -> Option<usize> {
        let e = emojis::get(emoji)?;
        self.classes.iter().position(|c| c.emoji == e.as_str())
    }

    /// The sprite of `class` at `size`, tinted or natural, sampled as asked.
    pub(crate) fn sprite(
        &self,
        class: usize,
        size: u32,
        tint: Option<Colour>,
        sampling: Sampling,
    ) -> Result<&Sprite, WorldError> {
        self.sprites
            .get(&SpriteKey {
                class,
                size,
                tint,
                sampling,
            })
            .ok_or_else(|| {
                WorldError::Config(format!("no sprite for object {class} at size {size}"))
            })
    }
}

/// Resamples straight-alpha RGBA artwork to a `size`×`size` premultiplied sprite.
fn resample(art: &image::RgbaImage, size: u32, sampling: Sampling) -> Sprite {
    let (w, h) = art.dimensions();
    let n = (size * size) as usize;
    let mut rgb = vec![[0f32; 3]; n];
    let mut alpha = vec![0f32; n];
    match sampling {
        Sampling::Smooth => {
            let wx = box_weights(w, size);
            let wy = box_weights(h, size);
            for (oy, ys) in wy.iter().enumerate() {
                for (ox, xs) in wx.iter().enumerate() {
                    let (mut acc, mut a) = ([0f32; 3], 0f32);
                    for &(sy, fy) in ys {
                        for &(sx, fx) in xs {
                            let p = art.get_pixel(sx, sy).0;
                            let pa = f32::from(p[3]) / 255.0 * fx * fy;
                            for c in 0..3 {
                                acc[c] += f32::from(p[c]) / 255.0 * pa;
                            }
                            a += pa;
                        }
                    }
                    let i = oy * size as usize + ox;
                    rgb[i] = acc;
                    alpha[i] = a.min(1.0);
                }
            }
        }
        Sampling::Aliased => {
            for oy in 0..size {
                for ox in 0..size {
                    let sx = ((ox as f32 + 0.5) * w as f32 / size as f32) as u32;
                    let sy = ((oy as f32 + 0.5) * h as f32 / size as f32) as u32;
                    let p = art.get_pixel(sx.min(w - 1), sy.min(h - 1)).0;
                    let i = (oy * size + ox) as usize;
                    if p[3] >= 128 {
                        alpha[i] = 1.0;
                        rgb[i] = [0, 1, 2].map(|c| f32::from(p[c]) / 255.0);
                    }
                }
            }
        }
    }
    Sprite::new(size, rgb, alpha)
}

/// For each output pixel, the source pixels it covers and the share of each.
fn box_weights(src: u32, dst: u32) -> Vec<Vec<(u32, f32)>> {
    let scale = src as f32 / dst as f32;
    (0..dst)
        .map(|o| {
            let (lo, hi) = (o as f32 * scale, (o + 1) as f32 * scale);
            (lo.floor() as u32..(hi.ceil() as u32).min(src))
                .map(|s| (s, ((s + 1) as f32).min(hi) - (s as f32).max(lo)))
                .map(|(s, cover)| (s, cover / scale))
                .collect()
        })
        .collect()
}

/// Recolours a sprite with a tint, keeping its shading: colour = tint × (0.35 + 0.65 × luma).
fn tinted(s: &Sprite, tint: Colour) -> Sprite {
    let t = tint.rgb_f32();
    let rgb = s.rgb.iter().zip(&s.alpha).map(|(m, &a)| {
        let luma = 0.299 * m[0] + 0.587 * m[1] + 0.114 * m[2];
        let v = 0.35 * a + 0.65 * luma;
        [t[0] * v, t[1] * v, t[2] * v]
    });
    Sprite::new(s.size, rgb.collect(), s.alpha.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_are_plentiful_named_and_unique() {
        let all = candidates();
        assert!(all.len() >= 100, "only {} candidate objects", all.len());
        let mut names: Vec<_> = all.iter().map(|c| c.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all.len());
        assert!(
            all.iter()
                .all(|c| !c.name.split(' ').any(|w| COLOUR_WORDS.contains(&w)))
        );
        assert!(all.iter().all(|c| c.name.split(' ').count() <= 2));
    }

    #[test]
    fn sampling_is_deterministic_and_seed_dependent() {
        let a = Atlas::sample(12, 7, 32).unwrap();
        let b = Atlas::sample(12, 7, 32).unwrap();
        let c = Atlas::sample(12, 8, 32).unwrap();
        assert_eq!(a.classes(), b.classes());
        assert_ne!(a.classes(), c.classes());
        let emojis: Vec<&str> = a.classes().iter().map(|c| c.emoji).collect();
        assert_eq!(
            Atlas::from_emojis(&emojis, 32).unwrap().classes(),
            a.classes()
        );
    }

    #[test]
    fn smooth_sprites_have_soft_edges_and_aliased_ones_do_not() {
        let atlas = Atlas::sample(4, 1, 32).unwrap();
        let size = atlas.geometry().sprite_sizes()[0];
        let smooth = atlas.sprite(0, size, None, Sampling::Smooth).unwrap();
        let aliased = atlas.sprite(0, size, None, Sampling::Aliased).unwrap();
        assert!(smooth.alpha.iter().any(|&a| a > 0.05 && a < 0.95));
        assert!(aliased.alpha.iter().all(|&a| a == 0.0 || a == 1.0));
        assert!(smooth.alpha.iter().sum::<f32>() > 0.2 * (size * size) as f32);
    }

    #[test]
    fn unknown_objects_are_errors() {
        assert!(matches!(
            Atlas::from_emojis(&["🍎", "not an emoji"], 32),
            Err(WorldError::UnknownObject(_))
        ));
        assert!(matches!(
            Atlas::sample(1, 0, 32),
            Err(WorldError::Config(_))
        ));
    }
}
