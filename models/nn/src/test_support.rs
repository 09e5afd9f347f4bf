//! What the kernels' tests share.

use candle_core::{Result, Tensor};

/// `y` and the gradient of `Σ y²` with respect to each of `vars`, all flattened: what two runs
/// of an op are compared on, bit for bit. A missing gradient is an error.
pub(crate) fn output_and_grads(y: &Tensor, vars: &[&Tensor]) -> Result<Vec<Vec<f32>>> {
    let grads = y.sqr()?.sum_all()?.backward()?;
    let mut all = vec![y.flatten_all()?.to_vec1::<f32>()?];
    for v in vars {
        let g = grads
            .get(v)
            .ok_or_else(|| candle_core::Error::Msg("no gradient".into()))?;
        all.push(g.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(all)
}

/// The bit patterns of a tensor's elements, flattened: for tests that two paths agree exactly.
pub(crate) fn bits(t: &Tensor) -> Result<Vec<u32>> {
    Ok(t.flatten_all()?
        .to_vec1::<f32>()?
        .iter()
        .map(|f| f.to_bits())
        .collect())
}
