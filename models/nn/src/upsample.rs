//! Nearest-neighbour ×2 upsampling of `(b, c, h, w)` tensors, as
//! `F.interpolate(x, scale_factor=2, mode="nearest")`.

use candle_core::{Result, Tensor};

/// `(b, c, h, w) → (b, c, 2h, 2w)`, each value repeated in a 2×2 block.
pub fn upsample_nearest2x(xs: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = xs.dims4()?;
    xs.upsample_nearest2d(2 * h, 2 * w)
}
