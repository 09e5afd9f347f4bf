//! Rendering scenes onto canvases, and the detail flaws a renderer can add: blur, noise,
//! blocking, colour bleeding and jagged edges. The clean render of a scene is unique
//! (fixed slots, area-averaged sprites), which is what makes the oracles exact.

use rand::Rng;
use rand_distr::{Distribution, Normal};

use crate::WorldError;
use crate::atlas::{Atlas, Sampling};
use crate::rng::{Stream, stream};
use crate::scene::Scene;

/// A float RGB canvas in [0, 1], row-major, used while rendering and by the oracles.
#[derive(Debug, Clone, PartialEq)]
pub struct Canvas {
    /// Side in pixels.
    pub size: u32,
    /// RGB per pixel, row-major.
    pub px: Vec<[f32; 3]>,
}

impl Canvas {
    /// A canvas filled with one colour.
    pub fn filled(size: u32, rgb: [f32; 3]) -> Canvas {
        Canvas {
            size,
            px: vec![rgb; (size * size) as usize],
        }
    }

    /// Reads an 8-bit image (it must be square).
    pub fn from_image(image: &image::RgbImage) -> Result<Canvas, WorldError> {
        let (w, h) = image.dimensions();
        if w != h {
            return Err(WorldError::ImageSize {
                expected: w.max(h),
                width: w,
                height: h,
            });
        }
        Ok(Canvas {
            size: w,
            px: image
                .pixels()
                .map(|p| p.0.map(|v| f32::from(v) / 255.0))
                .collect(),
        })
    }

    /// Quantises to an 8-bit image.
    pub fn to_image(&self) -> image::RgbImage {
        let mut out = image::RgbImage::new(self.size, self.size);
        for (o, p) in out.pixels_mut().zip(&self.px) {
            o.0 = p.map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8);
        }
        out
    }

    fn at(&self, x: i64, y: i64) -> [f32; 3] {
        let n = i64::from(self.size) - 1;
        self.px[(y.clamp(0, n) * (n + 1) + x.clamp(0, n)) as usize]
    }
}

/// Draws `scene` with sprites sampled as asked (`Smooth` is the clean render).
pub fn render_with(atlas: &Atlas, scene: &Scene, sampling: Sampling) -> Result<Canvas, WorldError> {
    let g = atlas.geometry();
    let mut c = Canvas::filled(g.canvas(), scene.background.rgb_f32());
    for (entity, slot) in scene.placements(g) {
        let sprite = atlas.sprite(entity.object, slot.size, entity.tint, sampling)?;
        for sy in 0..slot.size {
            for sx in 0..slot.size {
                let i = (sy * slot.size + sx) as usize;
                let o = ((slot.y + sy) * g.canvas() + slot.x + sx) as usize;
                let a = sprite.alpha[i];
                for ch in 0..3 {
                    c.px[o][ch] = c.px[o][ch] * (1.0 - a) + sprite.rgb[i][ch];
                }
            }
        }
    }
    Ok(c)
}

/// The clean render of `scene`: the one point of the clean-render manifold for that scene.
pub fn render(atlas: &Atlas, scene: &Scene) -> Result<image::RgbImage, WorldError> {
    Ok(render_with(atlas, scene, Sampling::Smooth)?.to_image())
}

/// A kind of detail flaw: it changes how an image looks, never what it shows.
///
/// Every flaw spans a few pixels, not one: a 32-pixel canvas stands for SD's 64×64 latent
/// grid, where a generation's flaws span several latent pixels, and a flaw confined to single
/// pixels would vanish under the noise of every timestep SPO judges at (docs/world.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlawKind {
    /// Gaussian blur, σ from 0.6 to 1.8 pixels.
    Blur,
    /// Additive Gaussian noise in blotches: drawn on a grid of 4-pixel cells and interpolated
    /// between them, σ from 0.04 to 0.2.
    Noise,
    /// 4×4 blocks flattened toward their mean, like heavy JPEG.
    Blocking,
    /// Chroma smeared and shifted sideways while luma stays: colours leak over edges.
    ColourBleed,
    /// Sprites nearest-sampled with hard alpha, then pixelated in 2×2 blocks: staircase edges
    /// instead of area-averaged ones.
    Jagged,
}

impl FlawKind {
    /// Every kind of flaw.
    pub const ALL: [FlawKind; 5] = [
        FlawKind::Blur,
        FlawKind::Noise,
        FlawKind::Blocking,
        FlawKind::ColourBleed,
        FlawKind::Jagged,
    ];

    /// The name written in tables.
    pub fn name(self) -> &'static str {
        match self {
            FlawKind::Blur => "blur",
            FlawKind::Noise => "noise",
            FlawKind::Blocking => "blocking",
            FlawKind::ColourBleed => "colour-bleed",
            FlawKind::Jagged => "jagged",
        }
    }
}

/// A detail flaw at a strength in (0, 1].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Flaw {
    /// What kind of flaw.
    pub kind: FlawKind,
    /// How strong, in (0, 1].
    pub strength: f32,
}

/// How the images a base model is trained on vary in quality, as SD's training set does:
/// a share of them carries one detail flaw of a uniformly drawn kind and strength.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QualityMix {
    /// Share of images with a flaw, in [0, 1].
    pub flawed_share: f64,
    /// Flaw strengths are drawn uniformly in this range (within (0, 1]).
    pub strength: (f32, f32),
}

impl QualityMix {
    /// The flaw of training image `index` in a mix seeded with `seed` (the same every time).
    pub fn flaw(&self, seed: u64, index: u64) -> Option<Flaw> {
        let mut rng = stream(seed, Stream::Training, 2 * index);
        let (lo, hi) = (
            self.strength.0.clamp(0.0, 1.0),
            self.strength.1.clamp(0.0, 1.0),
        );
        rng.random_bool(self.flawed_share.clamp(0.0, 1.0))
            .then(|| Flaw {
                kind: FlawKind::ALL[rng.random_range(0..FlawKind::ALL.len())],
                strength: rng.random_range(lo.min(hi)..=hi.max(lo)),
            })
    }

    /// Training image `index` of `scene`: its clean render or a flawed one, as [`Self::flaw`]
    /// decides.
    pub fn render(
        &self,
        atlas: &Atlas,
        scene: &Scene,
        seed: u64,
        index: u64,
    ) -> Result<(image::RgbImage, Option<Flaw>), WorldError> {
        let flaw = self.flaw(seed, index);
        let mut rng = stream(seed, Stream::Training, 2 * index + 1);
        Ok((render_flawed(atlas, scene, flaw, &mut rng)?, flaw))
    }
}

/// Renders `scene` with an optional detail flaw; `rng` drives the noise.
pub fn render_flawed(
    atlas: &Atlas,
    scene: &Scene,
    flaw: Option<Flaw>,
    rng: &mut impl Rng,
) -> Result<image::RgbImage, WorldError> {
    let Some(flaw) = flaw else {
        return render(atlas, scene);
    };
    let s = flaw.strength.clamp(0.0, 1.0);
    let out = match flaw.kind {
        FlawKind::Jagged => {
            let clean = render_with(atlas, scene, Sampling::Smooth)?;
            let aliased = pixelate(&render_with(atlas, scene, Sampling::Aliased)?, 2);
            let px = clean
                .px
                .iter()
                .zip(&aliased.px)
                .map(|(c, a)| [0, 1, 2].map(|ch| c[ch] + s * (a[ch] - c[ch])))
                .collect();
            Canvas {
                size: clean.size,
                px,
            }
        }
        FlawKind::Blur => {
            gaussian_blur(&render_with(atlas, scene, Sampling::Smooth)?, 0.6 + 1.2 * s)
        }
        FlawKind::Noise => {
            let mut c = render_with(atlas, scene, Sampling::Smooth)?;
            let normal = Normal::new(0.0f32, 0.04 + 0.16 * s)
                .map_err(|e| WorldError::Config(e.to_string()))?;
            let blotches = blotchy_noise(c.size, 4, || normal.sample(rng));
            for (p, e) in c.px.iter_mut().zip(blotches) {
                for (v, d) in p.iter_mut().zip(e) {
                    *v += d;
                }
            }
            c
        }
        FlawKind::Blocking => {
            blocking(&render_with(atlas, scene, Sampling::Smooth)?, 0.4 + 0.6 * s)
        }
        FlawKind::ColourBleed => colour_bleed(&render_with(atlas, scene, Sampling::Smooth)?, s),
    };
    Ok(out.to_image())
}

/// Noise drawn at the corners of `cell`-pixel cells and bilinearly interpolated inside them.
fn blotchy_noise(size: u32, cell: u32, mut draw: impl FnMut() -> f32) -> Vec<[f32; 3]> {
    let g = size.div_ceil(cell) as usize + 1;
    let grid: Vec<[f32; 3]> = (0..g * g).map(|_| [draw(), draw(), draw()]).collect();
    let mut out = Vec::with_capacity((size * size) as usize);
    for y in 0..size {
        for x in 0..size {
            let fy = (y as f32 + 0.5) / cell as f32;
            let fx = (x as f32 + 0.5) / cell as f32;
            let (y0, x0) = (fy.floor() as usize, fx.floor() as usize);
            let (wy, wx) = (fy - y0 as f32, fx - x0 as f32);
            let at = |yy: usize, xx: usize| grid[yy.min(g - 1) * g + xx.min(g - 1)];
            let (a, b, c, d) = (
                at(y0, x0),
                at(y0, x0 + 1),
                at(y0 + 1, x0),
                at(y0 + 1, x0 + 1),
            );
            out.push([0, 1, 2].map(|ch| {
                (1.0 - wy) * ((1.0 - wx) * a[ch] + wx * b[ch])
                    + wy * ((1.0 - wx) * c[ch] + wx * d[ch])
            }));
        }
    }
    out
}

/// Each `k`×`k` block takes its top-left pixel: staircase edges `k` pixels high.
fn pixelate(c: &Canvas, k: u32) -> Canvas {
    let n = c.size;
    let px = (0..n * n)
        .map(|i| {
            let (y, x) = (i / n, i % n);
            c.px[((y - y % k) * n + x - x % k) as usize]
        })
        .collect();
    Canvas { size: n, px }
}

fn gaussian_blur(c: &Canvas, sigma: f32) -> Canvas {
    let r = (sigma * 3.0).ceil() as i64;
    let k: Vec<f32> = (-r..=r)
        .map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let sum: f32 = k.iter().sum();
    let k: Vec<f32> = k.iter().map(|v| v / sum).collect();
    let n = i64::from(c.size);
    let pass = |src: &Canvas, horizontal: bool| {
        let mut px = vec![[0f32; 3]; src.px.len()];
        for y in 0..n {
            for x in 0..n {
                let mut acc = [0f32; 3];
                for (j, w) in k.iter().enumerate() {
                    let d = j as i64 - r;
                    let p = if horizontal {
                        src.at(x + d, y)
                    } else {
                        src.at(x, y + d)
                    };
                    for ch in 0..3 {
                        acc[ch] += w * p[ch];
                    }
                }
                px[(y * n + x) as usize] = acc;
            }
        }
        Canvas { size: src.size, px }
    };
    pass(&pass(c, true), false)
}

fn blocking(c: &Canvas, amount: f32) -> Canvas {
    const B: u32 = 4;
    let mut out = c.clone();
    for by in (0..c.size).step_by(B as usize) {
        for bx in (0..c.size).step_by(B as usize) {
            let idx: Vec<usize> = (by..(by + B).min(c.size))
                .flat_map(|y| (bx..(bx + B).min(c.size)).map(move |x| (y * c.size + x) as usize))
                .collect();
            let mut mean = [0f32; 3];
            for &i in &idx {
                for (m, v) in mean.iter_mut().zip(c.px[i]) {
                    *m += v / idx.len() as f32;
                }
            }
            for &i in &idx {
                for ((o, v), m) in out.px[i].iter_mut().zip(c.px[i]).zip(mean) {
                    *o = v + amount * (m - v);
                }
            }
        }
    }
    out
}

fn colour_bleed(c: &Canvas, s: f32) -> Canvas {
    let ycc: Vec<[f32; 3]> =
        c.px.iter()
            .map(|p| {
                let y = 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
                [y, p[2] - y, p[0] - y]
            })
            .collect();
    let radius = 1 + (2.0 * s).round() as i64;
    let shift = 1 + (s * 1.5).round() as i64;
    let n = i64::from(c.size);
    let mut px = vec![[0f32; 3]; c.px.len()];
    for y in 0..n {
        for x in 0..n {
            let (mut cb, mut cr) = (0f32, 0f32);
            for d in -radius..=radius {
                let sx = (x - shift + d).clamp(0, n - 1);
                let q = ycc[(y * n + sx) as usize];
                cb += q[1];
                cr += q[2];
            }
            let m = (2 * radius + 1) as f32;
            let (cb, cr) = (cb / m, cr / m);
            let luma = ycc[(y * n + x) as usize][0];
            let (r, b) = (luma + cr, luma + cb);
            let g = (luma - 0.299 * r - 0.114 * b) / 0.587;
            px[(y * n + x) as usize] = [r, g, b];
        }
    }
    Canvas { size: c.size, px }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scene::Grammar;
    use rand::SeedableRng;

    fn world() -> (Atlas, Vec<Scene>) {
        let atlas = Atlas::sample(8, 11, 32).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let scenes = (0..20)
            .map(|_| Scene::sample(&atlas, &Grammar::default(), &mut rng))
            .collect();
        (atlas, scenes)
    }

    #[test]
    fn every_flaw_changes_the_image_and_more_strength_changes_it_more() {
        let (atlas, scenes) = world();
        let dist = |a: &image::RgbImage, b: &image::RgbImage| {
            a.as_raw()
                .iter()
                .zip(b.as_raw())
                .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
                .sum::<f64>()
        };
        for kind in FlawKind::ALL {
            let (mut weak, mut strong) = (0.0, 0.0);
            for s in &scenes {
                let clean = render(&atlas, s).unwrap();
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
                weak += dist(
                    &clean,
                    &render_flawed(
                        &atlas,
                        s,
                        Some(Flaw {
                            kind,
                            strength: 0.2,
                        }),
                        &mut rng,
                    )
                    .unwrap(),
                );
                strong += dist(
                    &clean,
                    &render_flawed(
                        &atlas,
                        s,
                        Some(Flaw {
                            kind,
                            strength: 1.0,
                        }),
                        &mut rng,
                    )
                    .unwrap(),
                );
            }
            assert!(
                weak > 0.0 && strong > weak,
                "{kind:?}: weak {weak} strong {strong}"
            );
        }
    }

    #[test]
    fn a_quality_mix_flaws_its_share_of_images_the_same_way_every_time() {
        let (atlas, scenes) = world();
        let mix = QualityMix {
            flawed_share: 0.5,
            strength: (0.1, 1.0),
        };
        let flaws: Vec<Option<Flaw>> = (0..400).map(|i| mix.flaw(7, i)).collect();
        let flawed = flaws.iter().filter(|f| f.is_some()).count();
        assert!((160..240).contains(&flawed), "{flawed} of 400 flawed");
        for kind in FlawKind::ALL {
            assert!(
                flaws.iter().flatten().any(|f| f.kind == kind),
                "{kind:?} never drawn"
            );
        }
        assert!(
            flaws
                .iter()
                .flatten()
                .all(|f| (0.1..=1.0).contains(&f.strength))
        );
        for (i, s) in scenes.iter().enumerate() {
            let (a, fa) = mix.render(&atlas, s, 7, i as u64).unwrap();
            let (b, fb) = mix.render(&atlas, s, 7, i as u64).unwrap();
            assert_eq!((a.clone(), fa), (b, fb));
            assert_eq!(fa.is_none(), a == render(&atlas, s).unwrap());
        }
        let none = QualityMix {
            flawed_share: 0.0,
            ..mix
        };
        assert!((0..100).all(|i| none.flaw(7, i).is_none()));
    }

    #[test]
    fn the_clean_render_is_the_background_where_no_sprite_is() {
        let (atlas, scenes) = world();
        for s in &scenes {
            let img = render(&atlas, s).unwrap();
            assert_eq!(img.get_pixel(0, 0).0, s.background.rgb());
            assert_eq!(img.dimensions(), (32, 32));
        }
    }
}
