//! Image preprocessing for the scorers, reproducing the Python references to the pixel.
//!
//! - [`pil_resize`]: Pillow's uint8 `Image.resize` (python-pillow `src/libImaging/Resample.c`)
//!   with its bicubic (Keys cubic a = −0.5) or bilinear (triangle) filter, whose support widens
//!   by the downscale factor (antialiasing), weights normalised in f64 then rounded to 22-bit
//!   fixed point, two separable passes with the intermediate image stored as uint8 (pass order
//!   as Pillow 13).
//! - [`resize_bicubic_f32`]: torch's `F.interpolate(mode="bicubic", align_corners=False)` on float
//!   CHW data, with `antialias=True` (the same kernel as Pillow, computed in float) or `False`
//!   (a = −0.75, four border-clamped taps).
//! - [`Preprocess`]: the whole pipelines — HF `CLIPImageProcessor` (PickScore, aesthetic, CLIP
//!   score: shortest side → 224 with `int(224·long/short)`, centre crop with a floored offset),
//!   torchvision/OpenAI `clip` (ImageReward: the same with a round-half-even offset), and HPSv2's
//!   letterbox (longest side → 224 on floats, zero padding, both antialias modes).
//!
//! Deviation: HPSv2's `ResizeMaxSize` skips the padding when the longest side is already 224,
//! which makes a non-square tensor its model rejects; here such images are padded as well.

use std::path::Path;

use candle_core::{Device, Tensor};
use image::RgbImage;

use crate::error::ClipError;

/// OpenAI CLIP's per-channel mean (every scorer here uses it), digits as published.
#[allow(clippy::excessive_precision)]
pub const OPENAI_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// OpenAI CLIP's per-channel standard deviation, digits as published.
#[allow(clippy::excessive_precision)]
pub const OPENAI_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// Decodes an image file to 8-bit RGB (alpha dropped without compositing, as PIL's
/// `convert("RGB")`; EXIF orientation is not applied, as `Image.open` does not).
pub fn load_rgb(path: &Path) -> Result<RgbImage, ClipError> {
    let img = image::open(path).map_err(|source| ClipError::Image {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(img.to_rgb8())
}

fn keys_cubic(x: f64, a: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * a
    } else {
        0.0
    }
}

/// Pillow's resampling filters (`src/libImaging/Resample.c`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PilFilter {
    /// `Image.BILINEAR`: the triangle 1 − |x|, support 1.
    Bilinear,
    /// `Image.BICUBIC`: Keys cubic a = −0.5, support 2.
    Bicubic,
}

impl PilFilter {
    fn support(self) -> f64 {
        match self {
            PilFilter::Bilinear => 1.0,
            PilFilter::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            PilFilter::Bilinear => (1.0 - x.abs()).max(0.0),
            PilFilter::Bicubic => keys_cubic(x, -0.5),
        }
    }
}

/// Per output index: first input index and normalised weights (Pillow/torch antialias rule).
struct Taps {
    start: Vec<usize>,
    weights: Vec<Vec<f64>>,
}

fn antialias_taps(in_size: usize, out_size: usize, filter: PilFilter) -> Taps {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let mut start = Vec::with_capacity(out_size);
    let mut weights = Vec::with_capacity(out_size);
    for i in 0..out_size {
        let center = (i as f64 + 0.5) * scale;
        // C's (int) cast truncates toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let mut w: Vec<f64> = (xmin..xmax)
            .map(|x| filter.weight((x as f64 - center + 0.5) / filterscale))
            .collect();
        let total: f64 = w.iter().sum();
        if total != 0.0 {
            w.iter_mut().for_each(|v| *v /= total);
        }
        start.push(xmin);
        weights.push(w);
    }
    Taps { start, weights }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

fn fixed_point(weights: &[Vec<f64>]) -> Vec<Vec<i32>> {
    let one = (1u32 << PRECISION_BITS) as f64;
    weights
        .iter()
        .map(|w| {
            w.iter()
                .map(|&v| {
                    if v < 0.0 {
                        (-0.5 + v * one) as i32
                    } else {
                        (0.5 + v * one) as i32
                    }
                })
                .collect()
        })
        .collect()
}

fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One pass of Pillow's 8-bit resampler over a `w × h` interleaved RGB image: resizes the
/// width (`horizontal`) or the height to `out_len`, rounding through 22-bit fixed point.
fn pillow_pass(
    src: &[u8],
    (w, h): (usize, usize),
    out_len: usize,
    horizontal: bool,
    filter: PilFilter,
) -> Vec<u8> {
    let in_len = if horizontal { w } else { h };
    let taps = antialias_taps(in_len, out_len, filter);
    let k = fixed_point(&taps.weights);
    let (ow, oh) = if horizontal {
        (out_len, h)
    } else {
        (w, out_len)
    };
    let mut out = vec![0u8; ow * oh * 3];
    for y in 0..oh {
        for x in 0..ow {
            let (i, pos) = if horizontal { (x, y) } else { (y, x) };
            let first = taps.start[i];
            for c in 0..3 {
                let mut acc: i64 = 1 << (PRECISION_BITS - 1);
                for (j, &kj) in k[i].iter().enumerate() {
                    let idx = if horizontal {
                        (pos * w + first + j) * 3 + c
                    } else {
                        ((first + j) * w + pos) * 3 + c
                    };
                    acc += src[idx] as i64 * kj as i64;
                }
                out[(y * ow + x) * 3 + c] = clip8(acc);
            }
        }
    }
    out
}

/// Pillow's `img.resize((width, height), Image.BICUBIC)` on an RGB uint8 image, bit-exact
/// ([`pil_resize`]).
pub fn pil_resize_bicubic(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    pil_resize(img, width, height, PilFilter::Bicubic)
}

/// Pillow's `img.resize((width, height), filter)` on an RGB uint8 image, bit-exact.
///
/// Pillow 13 chooses the order of the two passes: the vertical pass goes first exactly when the
/// height shrinks by more than twice as many pixels as the width does (`h − out_h >
/// 2·max(w − out_w, 0)`; found by comparing both orders with Pillow 13.0.0 on 1053 size pairs,
/// all matched). Pillow ≤ 12 always went horizontal first; the two agree for every
/// aspect-preserving resize of an image less than twice as tall as wide, which covers the
/// scorers' inputs.
pub fn pil_resize(img: &RgbImage, width: u32, height: u32, filter: PilFilter) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (ow, oh) = (width as usize, height as usize);
    let src = img.as_raw();
    let vertical_first = h > oh && (h - oh) > 2 * w.saturating_sub(ow);
    let pass =
        |src: &[u8], size, out_len, horizontal| pillow_pass(src, size, out_len, horizontal, filter);
    let out = match (ow != w, oh != h) {
        (false, false) => src.clone(),
        (true, false) => pass(src, (w, h), ow, true),
        (false, true) => pass(src, (w, h), oh, false),
        (true, true) if vertical_first => {
            let tmp = pass(src, (w, h), oh, false);
            pass(&tmp, (w, oh), ow, true)
        }
        (true, true) => {
            let tmp = pass(src, (w, h), ow, true);
            pass(&tmp, (ow, h), oh, false)
        }
    };
    RgbImage::from_raw(width, height, out).unwrap_or_else(|| RgbImage::new(width, height))
}

/// The size after a shortest-side resize to `target`: `(target, int(target·long/short))`, as
/// HF's `get_resize_output_image_size` and torchvision's `Resize(int)` compute it.
pub fn shortest_side_size(width: u32, height: u32, target: u32) -> (u32, u32) {
    let scaled = |long: u32, short: u32| (target as u64 * long as u64 / short as u64) as u32;
    if width <= height {
        (target, scaled(height, width))
    } else {
        (scaled(width, height), target)
    }
}

/// How a centre crop places an odd margin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CropRounding {
    /// `(size − crop) // 2` — HF `CLIPImageProcessor`.
    Floor,
    /// `int(round((size − crop) / 2))`, Python's round-half-even — torchvision `CenterCrop`.
    HalfEven,
}

impl CropRounding {
    /// The offset of a `crop`-long window in `size`.
    pub fn offset(self, size: u32, crop: u32) -> u32 {
        let margin = size.saturating_sub(crop);
        match self {
            Self::Floor => margin / 2,
            Self::HalfEven => (margin as f64 / 2.0).round_ties_even() as u32,
        }
    }
}

/// `img`'s shortest side resized to `size` by Pillow's `filter` ([`shortest_side_size`],
/// [`pil_resize`]), then its centre `size × size` cut out: torchvision's `Resize(size)` +
/// `CenterCrop(size)` on a PIL image (with [`CropRounding::HalfEven`]), or HF's
/// `CLIPImageProcessor` (bicubic, [`CropRounding::Floor`]).
pub fn resize_centre_crop(
    img: &RgbImage,
    size: u32,
    filter: PilFilter,
    rounding: CropRounding,
) -> RgbImage {
    let (w, h) = shortest_side_size(img.width(), img.height(), size);
    let resized = pil_resize(img, w, h, filter);
    let (left, top) = (rounding.offset(w, size), rounding.offset(h, size));
    image::imageops::crop_imm(&resized, left, top, size, size).to_image()
}

/// Resizes float CHW data like torch's `F.interpolate(mode="bicubic", align_corners=False)`.
/// `src` is `(channels, h, w)` row-major; returns `(channels, out_h, out_w)`.
pub fn resize_bicubic_f32(
    src: &[f32],
    channels: usize,
    (h, w): (usize, usize),
    (out_h, out_w): (usize, usize),
    antialias: bool,
) -> Vec<f32> {
    // Horizontal then vertical, float intermediates (no rounding, no clamping).
    let taps_w = float_taps(w, out_w, antialias);
    let taps_h = float_taps(h, out_h, antialias);
    let mut tmp = vec![0f32; channels * h * out_w];
    for c in 0..channels {
        for y in 0..h {
            let row = &src[(c * h + y) * w..(c * h + y + 1) * w];
            for (x, taps) in taps_w.iter().enumerate() {
                let v: f64 = taps.iter().map(|&(i, k)| row[i] as f64 * k).sum();
                tmp[(c * h + y) * out_w + x] = v as f32;
            }
        }
    }
    let mut out = vec![0f32; channels * out_h * out_w];
    for c in 0..channels {
        for (y, taps) in taps_h.iter().enumerate() {
            for x in 0..out_w {
                let v: f64 = taps
                    .iter()
                    .map(|&(i, k)| tmp[(c * h + i) * out_w + x] as f64 * k)
                    .sum();
                out[(c * out_h + y) * out_w + x] = v as f32;
            }
        }
    }
    out
}

/// What SPO's step-aware preference model sees of a VAE's output (`get_preference_score`):
/// square `(b, 3, s, s)` pixels in about [−1, 1] → torch bicubic resize to `size`
/// (`align_corners=False`, no antialiasing, as `F.interpolate` defaults) → `(x / 2 + 0.5)`
/// clamped to [0, 1] (after the resize, as SPO does) → OpenAI mean / std. Returns
/// `(b, 3, size, size)` f32 on the input's device.
pub fn spm_pixels(decoded: &Tensor, size: usize) -> Result<Tensor, ClipError> {
    let (b, c, h, w) = decoded.dims4()?;
    if c != 3 || h != w {
        return Err(ClipError::Input(format!(
            "the SPM takes square RGB images, got {c} channels of {h}×{w}"
        )));
    }
    let src = decoded
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let plane = 3 * h * w;
    let mut out = Vec::with_capacity(b * 3 * size * size);
    for image in src.chunks_exact(plane) {
        let resized = resize_bicubic_f32(image, 3, (h, w), (size, size), false);
        for (ch, chunk) in resized.chunks_exact(size * size).enumerate() {
            out.extend(
                chunk
                    .iter()
                    .map(|v| ((v / 2.0 + 0.5).clamp(0.0, 1.0) - OPENAI_MEAN[ch]) / OPENAI_STD[ch]),
            );
        }
    }
    Ok(Tensor::from_vec(out, (b, 3, size, size), decoded.device())?)
}

/// Per output index, (input index, weight) pairs of torch's bicubic interpolation.
fn float_taps(in_size: usize, out_size: usize, antialias: bool) -> Vec<Vec<(usize, f64)>> {
    if antialias {
        let taps = antialias_taps(in_size, out_size, PilFilter::Bicubic);
        return taps
            .start
            .iter()
            .zip(&taps.weights)
            .map(|(&s, w)| w.iter().enumerate().map(|(j, &k)| (s + j, k)).collect())
            .collect();
    }
    // upsample_bicubic2d: src = scale·(dst + 0.5) − 0.5, taps floor(src)−1 … +2, clamped.
    let scale = in_size as f64 / out_size as f64;
    let a = -0.75;
    (0..out_size)
        .map(|i| {
            let real = scale * (i as f64 + 0.5) - 0.5;
            let base = real.floor();
            let t = real - base;
            let coeffs = [
                keys_cubic(t + 1.0, a),
                keys_cubic(t, a),
                keys_cubic(1.0 - t, a),
                keys_cubic(2.0 - t, a),
            ];
            coeffs
                .iter()
                .enumerate()
                .map(|(j, &k)| {
                    let idx = (base as i64 - 1 + j as i64).clamp(0, in_size as i64 - 1) as usize;
                    (idx, k)
                })
                .collect()
        })
        .collect()
}

/// A scorer's image pipeline, ending in OpenAI-normalised `(3, size, size)` f32 pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preprocess {
    /// Pillow bicubic shortest-side resize, centre crop, `/255`, normalise.
    ResizeCrop {
        /// Output side (224).
        size: u32,
        /// Crop offset rule: HF floors, torchvision rounds half to even.
        rounding: CropRounding,
    },
    /// HPSv2: `/255`, float bicubic resize of the longest side, zero padding, normalise.
    Letterbox {
        /// Output side (224).
        size: u32,
        /// torchvision ≥ 0.17 antialiases tensor resizes (`true`); older versions do not.
        antialias: bool,
    },
}

impl Preprocess {
    /// HF `CLIPImageProcessor` (PIL backend) with the OpenAI/LAION values.
    pub const HF_CLIP: Self = Self::ResizeCrop {
        size: 224,
        rounding: CropRounding::Floor,
    };
    /// torchvision `Resize(224, BICUBIC) + CenterCrop(224)` on a PIL image (OpenAI `clip`,
    /// ImageReward).
    pub const TORCHVISION: Self = Self::ResizeCrop {
        size: 224,
        rounding: CropRounding::HalfEven,
    };

    /// The output side.
    pub fn size(self) -> u32 {
        match self {
            Self::ResizeCrop { size, .. } | Self::Letterbox { size, .. } => size,
        }
    }

    /// Writes the normalised `(3, size, size)` pixels of `img` into `out`.
    pub fn write_into(self, img: &RgbImage, out: &mut [f32]) -> Result<(), ClipError> {
        let s = self.size() as usize;
        if out.len() != 3 * s * s {
            return Err(ClipError::Input(format!(
                "output buffer holds {} values, expected {}",
                out.len(),
                3 * s * s
            )));
        }
        if img.width() == 0 || img.height() == 0 {
            return Err(ClipError::Input("empty image".into()));
        }
        match self {
            Self::ResizeCrop { size, rounding } => {
                let cropped = resize_centre_crop(img, size, PilFilter::Bicubic, rounding);
                for (i, px) in cropped.as_raw().chunks_exact(3).enumerate() {
                    for c in 0..3 {
                        out[c * s * s + i] =
                            (px[c] as f32 / 255.0 - OPENAI_MEAN[c]) / OPENAI_STD[c];
                    }
                }
            }
            Self::Letterbox { size, antialias } => {
                let (w, h) = (img.width() as usize, img.height() as usize);
                let raw = img.as_raw();
                // ToTensor: (3, h, w) in [0, 1].
                let mut chw = vec![0f32; 3 * h * w];
                for (i, px) in raw.chunks_exact(3).enumerate() {
                    for c in 0..3 {
                        chw[c * h * w + i] = px[c] as f32 / 255.0;
                    }
                }
                let scale = size as f64 / h.max(w) as f64;
                let (nh, nw) = (
                    ((h as f64 * scale).round_ties_even() as usize).clamp(1, s),
                    ((w as f64 * scale).round_ties_even() as usize).clamp(1, s),
                );
                let resized = if (nh, nw) == (h, w) {
                    chw
                } else {
                    resize_bicubic_f32(&chw, 3, (h, w), (nh, nw), antialias)
                };
                let (top, left) = ((s - nh) / 2, (s - nw) / 2);
                for c in 0..3 {
                    let pad = (0.0 - OPENAI_MEAN[c]) / OPENAI_STD[c];
                    let plane = &mut out[c * s * s..(c + 1) * s * s];
                    plane.fill(pad);
                    for y in 0..nh {
                        for x in 0..nw {
                            let v = resized[(c * nh + y) * nw + x];
                            plane[(top + y) * s + left + x] = (v - OPENAI_MEAN[c]) / OPENAI_STD[c];
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// `(b, 3, size, size)` pixels of a batch, filled in one buffer.
    pub fn batch(self, images: &[&RgbImage], device: &Device) -> Result<Tensor, ClipError> {
        let s = self.size() as usize;
        let per = 3 * s * s;
        let mut buf = vec![0f32; images.len() * per];
        for (img, out) in images.iter().zip(buf.chunks_exact_mut(per)) {
            self.write_into(img, out)?;
        }
        Ok(Tensor::from_vec(buf, (images.len(), 3, s, s), device)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spm_pixels_upsample_clamp_and_normalise_and_refuse_non_square_images() {
        let dev = Device::Cpu;
        // A constant −0.5 (VAE scale) is 0.25 after (x/2 + 0.5), anywhere after the resize;
        // 3.0 clamps to 1.
        let mut data = vec![-0.5f32; 3 * 16 * 16];
        data[..16 * 16].fill(3.0);
        let t = Tensor::from_vec(data, (1, 3, 16, 16), &dev).unwrap();
        let out = spm_pixels(&t, 224).unwrap();
        assert_eq!(out.dims(), &[1, 3, 224, 224]);
        let v = out.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let plane = 224 * 224;
        let want = |c: usize, x: f32| (x - OPENAI_MEAN[c]) / OPENAI_STD[c];
        assert!(v[..plane].iter().all(|&p| (p - want(0, 1.0)).abs() < 1e-5));
        assert!(
            v[plane..]
                .iter()
                .enumerate()
                .all(|(i, &p)| (p - want(1 + i / plane, 0.25)).abs() < 1e-5)
        );
        let wide = Tensor::zeros((1, 3, 16, 8), candle_core::DType::F32, &dev).unwrap();
        let e = spm_pixels(&wide, 224).unwrap_err().to_string();
        assert!(e.contains("square") && e.contains("16×8"), "{e}");
    }

    #[test]
    fn crop_rounding_differs_only_on_half_margins() {
        // margin 85: both 42; margin 87: floor 43, half-even round(43.5) = 44; margin 89: 44 / 44.
        assert_eq!(CropRounding::Floor.offset(309, 224), 42);
        assert_eq!(CropRounding::HalfEven.offset(309, 224), 42);
        assert_eq!(CropRounding::Floor.offset(311, 224), 43);
        assert_eq!(CropRounding::HalfEven.offset(311, 224), 44);
        assert_eq!(CropRounding::HalfEven.offset(313, 224), 44);
    }

    #[test]
    fn shortest_side_truncates_the_long_side() {
        assert_eq!(shortest_side_size(221, 160, 224), (309, 224));
        assert_eq!(shortest_side_size(130, 200, 224), (224, 344));
        assert_eq!(shortest_side_size(512, 512, 224), (224, 224));
    }

    #[test]
    fn constant_image_stays_constant_through_every_resize() {
        let img = RgbImage::from_pixel(37, 23, image::Rgb([200, 10, 99]));
        let out = pil_resize_bicubic(&img, 101, 9);
        assert!(out.pixels().all(|p| p.0 == [200, 10, 99]));
        let chw = vec![0.25f32; 3 * 23 * 37];
        for aa in [true, false] {
            let r = resize_bicubic_f32(&chw, 3, (23, 37), (50, 11), aa);
            assert!(r.iter().all(|v| (v - 0.25).abs() < 1e-6), "antialias {aa}");
        }
    }
}
