//! Oracles no model can fool, usable on any RGB image of the canvas size.
//!
//! [`parse`] projects an image onto the clean-render manifold: it finds the scene (palette
//! background, layout template, objects and tints) whose clean render is nearest in squared
//! error, searching every template and, per slot, every object in every tint, then refines
//! each object among its closest candidates by an error that also weighs 4×4 block means
//! (robust to flaws that keep local means, like blocking and noise). Then:
//! - [`detail_quality`] grades how far the image's high frequencies are from those of that
//!   nearest clean render. Every flaw of the world (blur, noise, blocking, bleeding, jaggies)
//!   acts on high frequencies; a layout error mostly on low ones, and a wrong layout drawn
//!   cleanly scores 1 (the layout is judged by alignment alone). [`grain`] is an image's own
//!   high-frequency energy, and [`rmse`] to the prompted render the plain distance.
//! - [`alignment`] compares the parsed scene with the prompted one, GenEval-style: object,
//!   colour (of objects and background), position and count, each right or wrong.

use crate::WorldError;
use crate::atlas::{Atlas, Sampling};
use crate::colour::Colour;
use crate::render::{Canvas, render};
use crate::scene::{Entity, Layout, MAX_COUNT, Position, Relation, Scene, Slot};

/// RMS of the high-pass residual (in [0, 1] units) at which detail quality is 1/2.
///
/// Calibrated so that the quality spans the range the world's flaws and models produce:
/// docs/world.md gives the measured values per flaw kind and strength.
pub const DETAIL_HALF: f64 = 0.03;

/// What an image shows, and how far it is from the clean-render manifold.
#[derive(Debug, Clone, PartialEq)]
pub struct Parse {
    /// The scene the image shows: the nearest clean scene, refined by block means.
    pub scene: Scene,
    /// RMS difference (in [0, 1] units) between the image and the nearest clean render the
    /// search examined (that of `scene` or of a scene differing from it in one object).
    pub rmse: f64,
    /// The high-pass distance ([`high_pass_distance`]) to the clean render of `scene`.
    pub high_pass: f64,
}

/// Detail quality of an image: [`quality_from_high_pass`] of its high-pass distance to the
/// nearest clean render; 1 for any clean render, whatever its layout.
#[derive(Debug, Clone, PartialEq)]
pub struct DetailQuality {
    /// In (0, 1]; 1/2 at a high-pass distance of [`DETAIL_HALF`].
    pub quality: f64,
    /// The high-pass distance it grades.
    pub high_pass: f64,
    /// The plain RMS distance to the nearest clean render.
    pub rmse: f64,
    /// The scene the image was projected onto.
    pub observed: Scene,
}

/// Which parts of the prompt an image got right.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Alignment {
    /// The prompted objects, no more and no fewer kinds.
    pub object: bool,
    /// Object tints (or natural colours) and the background colour.
    pub colour: bool,
    /// The position of a group, or the relation and order of a pair.
    pub position: bool,
    /// How many copies of each object.
    pub count: bool,
}

impl Alignment {
    /// Every part right.
    pub fn all(&self) -> bool {
        self.object && self.colour && self.position && self.count
    }
    /// The share of parts right, in [0, 1].
    pub fn score(&self) -> f64 {
        [self.object, self.colour, self.position, self.count]
            .iter()
            .filter(|&&b| b)
            .count() as f64
            / 4.0
    }
}

/// RMS difference of two equally sized 8-bit images, in [0, 1] units.
pub fn rmse(a: &image::RgbImage, b: &image::RgbImage) -> f64 {
    let n = a.as_raw().len().max(1) as f64;
    let se: f64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(&x, &y)| ((f64::from(x) - f64::from(y)) / 255.0).powi(2))
        .sum();
    (se / n).sqrt()
}

/// Detail quality for a high-pass distance: 1 / (1 + (d / [`DETAIL_HALF`])²), graded
/// everywhere (no flat tail where every image reads the same), 1 at d = 0.
pub fn quality_from_high_pass(d: f64) -> f64 {
    1.0 / (1.0 + (d / DETAIL_HALF).powi(2))
}

/// `x` blurred by the 3×3 binomial kernel, edges clamped.
fn binomial_blur(x: &[[f32; 3]], n: usize) -> Vec<[f32; 3]> {
    let n = n as i64;
    let at =
        |v: &[[f32; 3]], xx: i64, y: i64| v[(y.clamp(0, n - 1) * n + xx.clamp(0, n - 1)) as usize];
    let pass = |src: &[[f32; 3]], horizontal: bool| -> Vec<[f32; 3]> {
        let mut out = vec![[0f32; 3]; src.len()];
        for y in 0..n {
            for xx in 0..n {
                let (prev, next) = if horizontal {
                    (at(src, xx - 1, y), at(src, xx + 1, y))
                } else {
                    (at(src, xx, y - 1), at(src, xx, y + 1))
                };
                let mid = src[(y * n + xx) as usize];
                out[(y * n + xx) as usize] =
                    [0, 1, 2].map(|ch| 0.25 * prev[ch] + 0.5 * mid[ch] + 0.25 * next[ch]);
            }
        }
        out
    };
    pass(&pass(x, true), false)
}

/// The `count` finest bands of a Laplacian pyramid without decimation, concatenated: `x − B x`
/// (pixel scale), `B x − B³ x` (a few pixels), `B³ x − B⁹ x` (a sprite's parts), …, B the
/// 3×3 binomial blur. Blur, noise, blocking, bleeding and jagged edges live here; flat regions
/// and smooth shading do not.
fn bands(x: &Canvas, count: usize) -> Vec<[f32; 3]> {
    let n = x.size as usize;
    let mut out = Vec::with_capacity(count * x.px.len());
    let (mut finer, mut applied) = (x.px.clone(), 0usize);
    for _ in 0..count {
        let target = (3 * applied).max(1);
        let coarser = (applied..target).fold(finer.clone(), |b, _| binomial_blur(&b, n));
        out.extend(
            finer
                .iter()
                .zip(&coarser)
                .map(|(p, q)| [0, 1, 2].map(|ch| p[ch] - q[ch])),
        );
        (finer, applied) = (coarser, target);
    }
    out
}

/// Bands the graded detail quality compares: the third is the one that survives noise, what
/// lets a judge of a noisy timestep's x₀-prediction see a flaw at all (docs/world.md).
const DETAIL_BANDS: usize = 3;

/// Bands [`grain`] measures: pixel-scale texture, such as a sampler's leftover noise.
const GRAIN_BANDS: usize = 2;

fn rms_difference(a: &[[f32; 3]], b: &[[f32; 3]]) -> f64 {
    let se: f64 = a
        .iter()
        .zip(b)
        .map(|(p, q)| {
            (0..3)
                .map(|ch| f64::from(p[ch] - q[ch]).powi(2))
                .sum::<f64>()
        })
        .sum();
    (se / (3 * a.len().max(1)) as f64).sqrt()
}

/// RMS of the difference of two equally sized images' detail bands (the three finest of a
/// Laplacian pyramid), in [0, 1] units:
/// 0 for equal images and for images that differ only by a smooth shading.
pub fn high_pass_distance(a: &image::RgbImage, b: &image::RgbImage) -> Result<f64, WorldError> {
    let (a, b) = (Canvas::from_image(a)?, Canvas::from_image(b)?);
    Ok(rms_difference(
        &bands(&a, DETAIL_BANDS),
        &bands(&b, DETAIL_BANDS),
    ))
}

/// An image's own pixel-scale texture: the RMS of its two finest bands. Clean renders have
/// some (sprite edges); a sampler's leftover noise and jaggies add to it, blur takes from it.
pub fn grain(image: &image::RgbImage) -> Result<f64, WorldError> {
    let c = Canvas::from_image(image)?;
    let b = bands(&c, GRAIN_BANDS);
    Ok(rms_difference(&b, &vec![[0.0; 3]; b.len()]))
}

/// Projects `image` onto the clean-render manifold of `atlas`'s world.
pub fn parse(atlas: &Atlas, image: &image::RgbImage) -> Result<Parse, WorldError> {
    let g = atlas.geometry();
    let size = g.canvas();
    if image.dimensions() != (size, size) {
        return Err(WorldError::ImageSize {
            expected: size,
            width: image.width(),
            height: image.height(),
        });
    }
    let x = Canvas::from_image(image)?;
    let background = nearest_background(&x);
    let b = background.rgb_f32();
    let bg_err: Vec<f32> = x.px.iter().map(|p| sq(p, &b)).collect();
    let total_bg: f32 = bg_err.iter().sum();
    let slot_bg = |s: &Slot| -> f32 {
        (s.y..s.y + s.size)
            .map(|y| {
                (s.x..s.x + s.size)
                    .map(|xx| bg_err[(y * size + xx) as usize])
                    .sum::<f32>()
            })
            .sum()
    };

    let candidates: Vec<Entity> = (0..atlas.classes().len())
        .flat_map(|object| {
            std::iter::once(None)
                .chain(Colour::TINTS.into_iter().map(Some))
                .map(move |tint| Entity { object, tint })
        })
        .collect();
    // Squared error of every candidate in a slot, against the image. With q = x − b and the
    // sprite's premultiplied colour m and alpha a, the render is b + m − a·b, so
    // Σ|q − m + a·b|² = Σ|q|² − 2(Σ q·m − Σ a·(q·b)) + Σ|m|² − 2 b·Σ a·m + |b|² Σ a²:
    // two dot products per candidate, the rest precomputed.
    let b2 = b[0] * b[0] + b[1] * b[1] + b[2] * b[2];
    let slot_errors = |s: &Slot| -> Result<Vec<f32>, WorldError> {
        let (mut q, mut qb) = (Vec::new(), Vec::new());
        for sy in 0..s.size {
            let row = ((s.y + sy) * size + s.x) as usize;
            for p in &x.px[row..row + s.size as usize] {
                let d = [p[0] - b[0], p[1] - b[1], p[2] - b[2]];
                qb.push(d[0] * b[0] + d[1] * b[1] + d[2] * b[2]);
                q.push(d);
            }
        }
        let q2 = slot_bg(s);
        candidates
            .iter()
            .map(|e| {
                let sprite = atlas.sprite(e.object, s.size, e.tint, Sampling::Smooth)?;
                let (mut qm, mut aqb) = (0f32, 0f32);
                for (((d, m), a), t) in q.iter().zip(&sprite.rgb).zip(&sprite.alpha).zip(&qb) {
                    qm += d[0] * m[0] + d[1] * m[1] + d[2] * m[2];
                    aqb += a * t;
                }
                let mo = sprite.moments;
                let bam = b[0] * mo.am[0] + b[1] * mo.am[1] + b[2] * mo.am[2];
                Ok(q2 - 2.0 * (qm - aqb) + mo.m2 - 2.0 * bam + b2 * mo.a2)
            })
            .collect()
    };

    // The best template by squared error, with a shortlist of entities for each group.
    let mut best = (total_bg, Layout::Empty, Vec::new());
    for position in Position::ALL {
        for count in 1..=MAX_COUNT {
            let slots = g.slots(position, count);
            let errs = slots
                .iter()
                .map(&slot_errors)
                .collect::<Result<Vec<_>, _>>()?;
            let base = total_bg - slots.iter().map(slot_bg).sum::<f32>();
            let summed: Vec<f32> = (0..candidates.len())
                .map(|k| errs.iter().map(|v| v[k]).sum())
                .collect();
            let short = shortlist(&summed);
            if base + summed[short[0]] < best.0 {
                let entity = candidates[short[0]];
                best = (
                    base + summed[short[0]],
                    Layout::Single {
                        entity,
                        position,
                        count,
                    },
                    vec![short],
                );
            }
        }
    }
    for relation in Relation::ALL {
        let (h1, h2) = relation.halves();
        let (s1, s2) = (g.slots(h1, 1)[0], g.slots(h2, 1)[0]);
        let (e1, e2) = (slot_errors(&s1)?, slot_errors(&s2)?);
        let (l1, l2) = (shortlist(&e1), shortlist(&e2));
        let cost = total_bg - slot_bg(&s1) - slot_bg(&s2) + e1[l1[0]] + e2[l2[0]];
        if cost < best.0 {
            let (first, second) = (candidates[l1[0]], candidates[l2[0]]);
            best = (
                cost,
                Layout::Pair {
                    first,
                    second,
                    relation,
                },
                vec![l1, l2],
            );
        }
    }
    // Refine each group's entity within its shortlist by an objective that adds the error of
    // 4×4 block means: flaws that keep local means (blocking, noise, bleeding) bias plain
    // squared error toward flat sprites, block means are blind to them. A clean render still
    // parses to itself, the only scene at objective 0.
    let mut scene = Scene {
        background,
        layout: best.1,
    };
    let first = render(atlas, &scene)?;
    let mut objective = refine_objective(&x, &first);
    let mut nearest = rmse(image, &first);
    let mut chosen = first;
    for (group, list) in best.2.iter().enumerate() {
        for &k in &list[1..] {
            let mut s = scene;
            match (&mut s.layout, group) {
                (Layout::Single { entity, .. }, _)
                | (Layout::Pair { first: entity, .. }, 0)
                | (Layout::Pair { second: entity, .. }, _) => *entity = candidates[k],
                (Layout::Empty, _) => {}
            }
            let r = render(atlas, &s)?;
            nearest = nearest.min(rmse(image, &r));
            let o = refine_objective(&x, &r);
            if o < objective {
                (scene, objective, chosen) = (s, o, r);
            }
        }
    }
    Ok(Parse {
        scene,
        rmse: nearest,
        high_pass: rms_difference(
            &bands(&x, DETAIL_BANDS),
            &bands(&Canvas::from_image(&chosen)?, DETAIL_BANDS),
        ),
    })
}

/// Detail quality of any image of the canvas size: distance to its nearest clean render.
pub fn detail_quality(atlas: &Atlas, image: &image::RgbImage) -> Result<DetailQuality, WorldError> {
    Ok(DetailQuality::of(parse(atlas, image)?))
}

impl DetailQuality {
    /// The detail quality a parse implies.
    pub fn of(p: Parse) -> DetailQuality {
        DetailQuality {
            quality: quality_from_high_pass(p.high_pass),
            high_pass: p.high_pass,
            rmse: p.rmse,
            observed: p.scene,
        }
    }
}

/// Both oracles from one parse: what an evaluation of a generated image needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    pub alignment: Alignment,
    pub detail: DetailQuality,
}

/// Judges `image` against the prompted scene with both oracles (one parse).
pub fn judge(
    atlas: &Atlas,
    prompted: &Scene,
    image: &image::RgbImage,
) -> Result<Judgement, WorldError> {
    let p = parse(atlas, image)?;
    Ok(Judgement {
        alignment: compare(prompted, &p.scene),
        detail: DetailQuality::of(p),
    })
}

/// How well `image` shows the prompted scene (object, colour, position, count).
pub fn alignment(
    atlas: &Atlas,
    prompted: &Scene,
    image: &image::RgbImage,
) -> Result<Alignment, WorldError> {
    Ok(compare(prompted, &parse(atlas, image)?.scene))
}

/// Alignment of an observed scene to a prompted one.
pub fn compare(prompted: &Scene, observed: &Scene) -> Alignment {
    let (gp, go) = (prompted.groups(), observed.groups());
    let mut classes_p: Vec<usize> = gp.iter().map(|(e, _)| e.object).collect();
    let mut classes_o: Vec<usize> = go.iter().map(|(e, _)| e.object).collect();
    classes_p.sort_unstable();
    classes_o.sort_unstable();
    let object = classes_p == classes_o;

    // Match each prompted group to an observed one of the same object, else to the leftovers in order.
    let mut unused: Vec<usize> = (0..go.len()).collect();
    let mut matched: Vec<Option<usize>> = gp
        .iter()
        .map(|(e, _)| {
            unused
                .iter()
                .position(|&j| go[j].0.object == e.object)
                .map(|k| unused.remove(k))
        })
        .collect();
    for m in matched.iter_mut().filter(|m| m.is_none()) {
        if !unused.is_empty() {
            *m = Some(unused.remove(0));
        }
    }
    let count = gp.len() == go.len()
        && gp
            .iter()
            .zip(&matched)
            .all(|((_, n), m)| m.is_some_and(|j| go[j].1 == *n));
    let colour = prompted.background == observed.background
        && gp
            .iter()
            .zip(&matched)
            .all(|((e, _), m)| m.is_some_and(|j| go[j].0.tint == e.tint));
    let position = match (prompted.layout, observed.layout) {
        (Layout::Empty, Layout::Empty) => true,
        (Layout::Single { position: p, .. }, Layout::Single { position: o, .. }) => p == o,
        (
            Layout::Pair {
                first,
                second,
                relation: r,
            },
            Layout::Pair {
                first: f,
                second: s,
                relation: o,
            },
        ) => {
            r == o
                && !(f.object == second.object
                    && s.object == first.object
                    && first.object != second.object)
        }
        _ => false,
    };
    Alignment {
        object,
        colour,
        position,
        count,
    }
}

fn sq(p: &[f32; 3], b: &[f32; 3]) -> f32 {
    (0..3).map(|c| (p[c] - b[c]).powi(2)).sum()
}

/// Candidates refined per group.
const SHORTLIST: usize = 8;
/// Weight of the block-mean term in the refinement.
const BLOCK_WEIGHT: f32 = 4.0;

/// Indices of the [`SHORTLIST`] smallest errors, smallest first.
fn shortlist(errors: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..errors.len()).collect();
    idx.sort_by(|&a, &b| errors[a].total_cmp(&errors[b]));
    idx.truncate(SHORTLIST);
    idx
}

/// Squared error plus [`BLOCK_WEIGHT`] times the squared error of 4×4 block means, counted
/// once per pixel.
fn refine_objective(x: &Canvas, render: &image::RgbImage) -> f32 {
    let n = x.size as usize;
    let per_row = n.div_ceil(4);
    let mut full = 0f32;
    let mut blocks = vec![[0f32; 3]; per_row * per_row];
    for (i, (p, q)) in x.px.iter().zip(render.pixels()).enumerate() {
        let b = &mut blocks[(i / n / 4) * per_row + (i % n) / 4];
        for ch in 0..3 {
            let d = p[ch] - f32::from(q.0[ch]) / 255.0;
            full += d * d;
            b[ch] += d;
        }
    }
    // 16 pixels × (sum / 16)² = sum² / 16
    full + BLOCK_WEIGHT
        * blocks
            .iter()
            .map(|b| b.iter().map(|s| s * s / 16.0).sum::<f32>())
            .sum::<f32>()
}

/// The palette background nearest to the median colour of the canvas border.
fn nearest_background(x: &Canvas) -> Colour {
    let n = x.size as usize;
    let border: Vec<[f32; 3]> = (0..n)
        .flat_map(|i| {
            [
                x.px[i],
                x.px[(n - 1) * n + i],
                x.px[i * n],
                x.px[i * n + n - 1],
            ]
        })
        .collect();
    let median: [f32; 3] = [0, 1, 2].map(|ch| {
        let mut v: Vec<f32> = border.iter().map(|p| p[ch]).collect();
        v.sort_unstable_by(f32::total_cmp);
        v[v.len() / 2]
    });
    Colour::BACKGROUNDS
        .into_iter()
        .min_by(|a, b| sq(&median, &a.rgb_f32()).total_cmp(&sq(&median, &b.rgb_f32())))
        .unwrap_or(Colour::White)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::{Flaw, FlawKind, render_flawed};
    use crate::scene::Grammar;
    use rand::SeedableRng;

    #[test]
    fn clean_renders_parse_back_exactly_and_score_full_detail() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        for (canvas, scenes) in [(32, 60), (48, 15)] {
            let atlas = Atlas::sample(12, 4, canvas).unwrap();
            for _ in 0..scenes {
                let s = Scene::sample(&atlas, &Grammar::default(), &mut rng);
                let img = render(&atlas, &s).unwrap();
                let p = parse(&atlas, &img).unwrap();
                assert_eq!(p.scene, s, "{canvas}: {}", s.code(&atlas));
                assert_eq!(p.rmse, 0.0);
                assert!(compare(&s, &p.scene).all());
            }
        }
        let atlas = Atlas::sample(12, 4, 32).unwrap();
        let empty = Scene {
            background: Colour::Blue,
            layout: Layout::Empty,
        };
        assert_eq!(
            parse(&atlas, &render(&atlas, &empty).unwrap())
                .unwrap()
                .scene,
            empty
        );
    }

    #[test]
    fn detail_quality_ignores_layout_and_sees_flaws() {
        let atlas = Atlas::sample(12, 4, 32).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(10);
        let mut mean = [0f64; FlawKind::ALL.len()];
        for _ in 0..20 {
            let prompted = Scene::sample(&atlas, &Grammar::default(), &mut rng);
            let other = Scene::sample(&atlas, &Grammar::default(), &mut rng);
            // A clean render of the wrong scene: perfect detail, imperfect alignment.
            let wrong = render(&atlas, &other).unwrap();
            assert_eq!(detail_quality(&atlas, &wrong).unwrap().quality, 1.0);
            assert_eq!(
                alignment(&atlas, &prompted, &wrong).unwrap(),
                compare(&prompted, &other)
            );
            for kind in FlawKind::ALL {
                let img = render_flawed(
                    &atlas,
                    &prompted,
                    Some(Flaw {
                        kind,
                        strength: 1.0,
                    }),
                    &mut rng,
                )
                .unwrap();
                let q = detail_quality(&atlas, &img).unwrap().quality;
                // every flaw is seen; bleeding moves chroma only, so on a pale object it is mild
                assert!(q < 0.99, "{kind:?} on {}: {q}", prompted.code(&atlas));
                mean[kind as usize] += q / 20.0;
            }
        }
        for (kind, q) in FlawKind::ALL.iter().zip(mean) {
            assert!(q < 0.9, "{kind:?}: mean quality {q} at full strength");
        }
    }

    /// Every graded measure moves one way as a flaw gets stronger, for every kind of flaw:
    /// detail quality falls and the distance to the prompted render grows (on the mean over
    /// scenes, and on nearly every image: at σ ≈ 1.8 a blur can make the parse misread a small
    /// object's tint, and the distance is to the parsed scene's render). Grain rises with
    /// noise and falls with blur; blocking and 2×2-pixelated jaggies trade fine detail for
    /// block edges and bleeding moves chroma only, so grain is no measure of those three.
    #[test]
    fn graded_measures_are_monotone_in_each_flaws_strength() {
        let atlas = Atlas::sample(8, 0, 32).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let scenes: Vec<Scene> = (0..24)
            .map(|_| Scene::sample(&atlas, &Grammar::default(), &mut rng))
            .collect();
        let strengths = [0.1f32, 0.3, 0.6, 1.0];
        for kind in FlawKind::ALL {
            // [strength][measure]: mean detail, mean prompt distance, mean grain
            let mut means = [[0f64; 3]; 4];
            let mut image_steps = 0;
            let mut image_falls = 0;
            for s in &scenes {
                let clean = render(&atlas, s).unwrap();
                let mut last = f64::INFINITY;
                for (k, &strength) in strengths.iter().enumerate() {
                    // the same noise draws at every strength: only the strength differs
                    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(2);
                    let img =
                        render_flawed(&atlas, s, Some(Flaw { kind, strength }), &mut r).unwrap();
                    let q = detail_quality(&atlas, &img).unwrap().quality;
                    means[k][0] += q / scenes.len() as f64;
                    means[k][1] += rmse(&img, &clean) / scenes.len() as f64;
                    means[k][2] += grain(&img).unwrap() / scenes.len() as f64;
                    if k > 0 {
                        image_steps += 1;
                        image_falls += usize::from(q <= last + 1e-3);
                    }
                    last = q;
                }
                assert_eq!(detail_quality(&atlas, &clean).unwrap().quality, 1.0);
            }
            for k in 1..strengths.len() {
                assert!(means[k][0] < means[k - 1][0], "{kind:?} detail {means:?}");
                assert!(means[k][1] > means[k - 1][1], "{kind:?} distance {means:?}");
            }
            // graded: below 1 at the weakest, never in a flat tail at the strongest
            assert!(
                means[0][0] < 1.0 && (0.1..0.8).contains(&means[3][0]),
                "{kind:?}: {means:?}"
            );
            let rising = match kind {
                FlawKind::Noise => Some(true),
                FlawKind::Blur => Some(false),
                FlawKind::Blocking | FlawKind::ColourBleed | FlawKind::Jagged => None,
            };
            for k in 1..strengths.len() {
                if let Some(rising) = rising {
                    assert_eq!(
                        means[k][2] > means[k - 1][2],
                        rising,
                        "{kind:?} grain {means:?}"
                    );
                }
            }
            assert!(
                image_falls * 100 >= image_steps * 90,
                "{kind:?}: detail fell on {image_falls} of {image_steps} steps"
            );
        }
    }

    #[test]
    fn the_high_pass_distance_ignores_smooth_shading_but_not_edges() {
        let flat = image::RgbImage::from_pixel(32, 32, image::Rgb([100, 100, 100]));
        let ramp =
            image::RgbImage::from_fn(32, 32, |x, _| image::Rgb([100 + 2 * x as u8, 100, 100]));
        let edge = image::RgbImage::from_fn(32, 32, |x, _| {
            image::Rgb([if x < 16 { 100 } else { 160 }, 100, 100])
        });
        // a linear ramp is all low frequency (but at the clamped border)
        assert!(high_pass_distance(&flat, &ramp).unwrap() < 0.002);
        assert!(high_pass_distance(&flat, &edge).unwrap() > 0.005);
        assert_eq!(high_pass_distance(&edge, &edge).unwrap(), 0.0);
        assert_eq!(quality_from_high_pass(0.0), 1.0);
        assert!((quality_from_high_pass(DETAIL_HALF) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn alignment_breaks_down_by_part() {
        let e = |object, tint| Entity { object, tint };
        let single = |entity, position, count| Scene {
            background: Colour::White,
            layout: Layout::Single {
                entity,
                position,
                count,
            },
        };
        let p = single(e(0, Some(Colour::Red)), Position::Left, 2);
        assert_eq!(
            compare(&p, &single(e(1, Some(Colour::Red)), Position::Left, 2)),
            Alignment {
                object: false,
                colour: true,
                position: true,
                count: true
            }
        );
        assert_eq!(
            compare(&p, &single(e(0, None), Position::Left, 2)),
            Alignment {
                object: true,
                colour: false,
                position: true,
                count: true
            }
        );
        assert_eq!(
            compare(&p, &single(e(0, Some(Colour::Red)), Position::Top, 2)),
            Alignment {
                object: true,
                colour: true,
                position: false,
                count: true
            }
        );
        assert_eq!(
            compare(&p, &single(e(0, Some(Colour::Red)), Position::Left, 3)),
            Alignment {
                object: true,
                colour: true,
                position: true,
                count: false
            }
        );
        let pair = |first, second, relation| Scene {
            background: Colour::Gray,
            layout: Layout::Pair {
                first,
                second,
                relation,
            },
        };
        let q = pair(e(0, None), e(1, None), Relation::LeftOf);
        assert!(!compare(&q, &pair(e(1, None), e(0, None), Relation::LeftOf)).position);
        assert!(compare(&q, &pair(e(1, None), e(0, None), Relation::LeftOf)).object);
        assert!(!compare(&q, &pair(e(0, None), e(1, None), Relation::Above)).position);
        let mut wrong_bg = q;
        wrong_bg.background = Colour::Black;
        assert_eq!(
            compare(&q, &wrong_bg),
            Alignment {
                object: true,
                colour: false,
                position: true,
                count: true
            }
        );
        assert_eq!(compare(&q, &q).score(), 1.0);
    }

    #[test]
    fn images_of_the_wrong_size_are_refused() {
        let atlas = Atlas::sample(4, 2, 32).unwrap();
        let img = image::RgbImage::new(64, 64);
        assert!(matches!(
            parse(&atlas, &img),
            Err(WorldError::ImageSize {
                expected: 32,
                width: 64,
                height: 64
            })
        ));
    }
}
