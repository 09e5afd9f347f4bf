//! Nearest-neighbour ×2 upsampling of `(b, c, h, w)` tensors, as
//! `F.interpolate(x, scale_factor=2, mode="nearest")`.
//!
//! candle's `upsample_nearest2d` backward is a grouped convolution, ~100× its forward. On the
//! CPU in f32 this uses [`Upsample2x`], whose backward is the direct 2×2 block sum
//! [`BlockSum2x`]; other devices use candle's op.

use crate::cpu_slice::storage_slice;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `(b, c, h, w) → (b, c, 2h, 2w)`, each value repeated in a 2×2 block.
pub fn upsample_nearest2x(xs: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = xs.dims4()?;
    if crate::fast_path::applies(&[xs]) {
        return xs.contiguous()?.apply_op1(Upsample2x);
    }
    xs.upsample_nearest2d(2 * h, 2 * w)
}

fn planes<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> Result<(&'a [f32], usize, usize, usize)> {
    let [b, c, h, w] = *layout.dims() else {
        candle_core::bail!("{op}: input must be (b, c, h, w), got {:?}", layout.dims());
    };
    let data = storage_slice(storage, layout, &format!("{op}: input"))?;
    Ok((data, b * c, h, w))
}

/// Nearest ×2 upsampling (f32, CPU); backward is [`BlockSum2x`].
#[derive(Debug, Clone, Copy)]
pub struct Upsample2x;

/// Sum over each 2×2 block, `(b, c, 2h, 2w) → (b, c, h, w)` (f32, CPU); backward is
/// [`Upsample2x`].
#[derive(Debug, Clone, Copy)]
pub struct BlockSum2x;

impl CustomOp1 for Upsample2x {
    fn name(&self) -> &'static str {
        "upsample-nearest-2x"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (src, _, h, w) = planes(storage, layout, "upsample")?;
        let mut out = vec![0f32; src.len() * 4];
        out.par_chunks_mut(4 * h * w)
            .zip(src.par_chunks(h * w))
            .for_each(|(dst, plane)| {
                for i in 0..2 * h {
                    let row = &plane[(i / 2) * w..(i / 2 + 1) * w];
                    for (j, d) in dst[i * 2 * w..(i + 1) * 2 * w].iter_mut().enumerate() {
                        *d = row[j / 2];
                    }
                }
            });
        let d = layout.dims();
        Ok((
            CpuStorage::F32(out),
            Shape::from((d[0], d[1], 2 * h, 2 * w)),
        ))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.contiguous()?.apply_op1_no_bwd(&BlockSum2x)?))
    }
}

impl CustomOp1 for BlockSum2x {
    fn name(&self) -> &'static str {
        "block-sum-2x"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (src, _, h2, w2) = planes(storage, layout, "block-sum")?;
        let (h, w) = (h2 / 2, w2 / 2);
        let mut out = vec![0f32; src.len() / 4];
        out.par_chunks_mut(h * w)
            .zip(src.par_chunks(h2 * w2))
            .for_each(|(dst, plane)| {
                for i in 0..h {
                    for j in 0..w {
                        let (r0, r1) = (2 * i * w2, (2 * i + 1) * w2);
                        dst[i * w + j] = plane[r0 + 2 * j]
                            + plane[r0 + 2 * j + 1]
                            + plane[r1 + 2 * j]
                            + plane[r1 + 2 * j + 1];
                    }
                }
            });
        let d = layout.dims();
        Ok((CpuStorage::F32(out), Shape::from((d[0], d[1], h, w))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.contiguous()?.apply_op1_no_bwd(&Upsample2x)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SeededRng;
    use candle_core::{DType, Device, Var};

    #[test]
    fn matches_candle_upsample_values_and_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = SeededRng::new(4);
        let x = Var::from_tensor(&rng.normal((2, 3, 4, 5), 0.0, 1.0, DType::F32, &dev)?)?;
        let fast = upsample_nearest2x(x.as_tensor())?;
        let plain = x.as_tensor().upsample_nearest2d(8, 10)?;
        assert_eq!(
            fast.flatten_all()?.to_vec1::<f32>()?,
            plain.flatten_all()?.to_vec1::<f32>()?
        );
        let probe = rng.normal((2, 3, 8, 10), 0.0, 1.0, DType::F32, &dev)?;
        let g_fast = (fast * &probe)?.sum_all()?.backward()?;
        let g_plain = (plain * &probe)?.sum_all()?.backward()?;
        let (Some(a), Some(b)) = (g_fast.get(&x), g_plain.get(&x)) else {
            panic!("missing gradient");
        };
        let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "{diff}");
        Ok(())
    }

    #[test]
    fn a_tensor_that_is_not_four_dimensional_is_an_error_naming_its_shape() -> Result<()> {
        let xs = Tensor::zeros((2, 3, 4), DType::F32, &Device::Cpu)?;
        let err = match xs.apply_op1(Upsample2x) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("a 3-D input was accepted"),
        };
        assert!(
            err.contains("upsample: input must be (b, c, h, w), got [2, 3, 4]"),
            "{err}"
        );
        Ok(())
    }
}
