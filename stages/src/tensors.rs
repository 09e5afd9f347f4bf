//! Images ↔ tensors: `(b, 3, h, w)` f32 in [-1, 1] for the in-world models, in [0, 1] from a real
//! VAE (post-processed as diffusers does).

use crate::error::Result;
use candle_core::{Device, Tensor};
use image::RgbImage;
use spo_core::StageError;

/// Stacks same-sized images into `(b, 3, h, w)` in [-1, 1].
pub fn images_to_tensor(images: &[&RgbImage], device: &Device) -> Result<Tensor> {
    let Some(first) = images.first() else {
        return Err(StageError::Failed("no images to stack".into()).into());
    };
    let (w, h) = first.dimensions();
    let (w, h) = (w as usize, h as usize);
    let mut data = vec![0f32; images.len() * 3 * h * w];
    for (b, im) in images.iter().enumerate() {
        if im.dimensions() != first.dimensions() {
            return Err(StageError::Failed(format!(
                "image {b} is {:?}, expected {w}x{h}",
                im.dimensions()
            ))
            .into());
        }
        for (x, y, px) in im.enumerate_pixels() {
            for c in 0..3 {
                data[((b * 3 + c) * h + y as usize) * w + x as usize] = px[c] as f32 / 127.5 - 1.0;
            }
        }
    }
    Ok(Tensor::from_vec(data, (images.len(), 3, h, w), device)?)
}

/// Splits `(b, 3, h, w)` in [-1, 1] back into 8-bit images (clamped).
pub fn tensor_to_images(t: &Tensor) -> Result<Vec<RgbImage>> {
    to_images(t, |v| (v + 1.0) * 127.5)
}

/// Splits `(b, 3, h, w)` in [0, 1] (a real VAE's post-processed output) into 8-bit images, as
/// diffusers' `numpy_to_pil` rounds them.
pub fn unit_tensor_to_images(t: &Tensor) -> Result<Vec<RgbImage>> {
    to_images(t, |v| v * 255.0)
}

fn to_images(t: &Tensor, level: impl Fn(f32) -> f32) -> Result<Vec<RgbImage>> {
    let (b, c, h, w) = t.dims4()?;
    if c != 3 {
        return Err(StageError::Failed(format!("expected 3 channels, got {c}")).into());
    }
    let v: Vec<f32> = t
        .to_dtype(candle_core::DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())?;
    Ok((0..b)
        .map(|i| {
            RgbImage::from_fn(w as u32, h as u32, |x, y| {
                let at = |ch: usize| {
                    level(v[((i * 3 + ch) * h + y as usize) * w + x as usize])
                        .round()
                        .clamp(0.0, 255.0) as u8
                };
                image::Rgb([at(0), at(1), at(2)])
            })
        })
        .collect())
}

/// PNG bytes of an image.
pub fn png_bytes(im: &RgbImage) -> Result<Vec<u8>> {
    let mut buf = std::io::Cursor::new(Vec::new());
    im.write_to(&mut buf, image::ImageFormat::Png)?;
    Ok(buf.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_is_exact_for_8_bit_images() {
        let a = RgbImage::from_fn(4, 3, |x, y| {
            image::Rgb([(x * 60) as u8, (y * 90) as u8, 255])
        });
        let b = RgbImage::from_fn(4, 3, |x, y| image::Rgb([0, (x + y) as u8, 7]));
        let t = images_to_tensor(&[&a, &b], &Device::Cpu).unwrap();
        assert_eq!(t.dims4().unwrap(), (2, 3, 3, 4));
        assert_eq!(tensor_to_images(&t).unwrap(), vec![a, b]);
    }
}
