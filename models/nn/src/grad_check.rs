//! A check that every trainable variable receives a gradient.
//!
//! candle computes no gradient through ops recorded without a backward (fused LayerNorm,
//! `softmax_last_dim`, RmsNorm, rope), and `backward()` does not fail: the layers upstream simply
//! stop learning. Tests of every trainable model call [`vars_without_gradient`] after one
//! backward pass and expect an empty list.

use candle_core::backprop::GradStore;
use candle_core::{Result, Var};

/// Names of the variables whose gradient in `grads` is missing or exactly zero everywhere.
pub fn vars_without_gradient(vars: &[(String, Var)], grads: &GradStore) -> Result<Vec<String>> {
    let mut missing = Vec::new();
    for (name, var) in vars {
        let has_signal = match grads.get(var) {
            Some(g) => {
                g.abs()?
                    .sum_all()?
                    .to_dtype(candle_core::DType::F64)?
                    .to_scalar::<f64>()?
                    > 0.0
            }
            None => false,
        };
        if !has_signal {
            missing.push(name.clone());
        }
    }
    Ok(missing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn reports_unused_and_zero_gradient_vars() -> Result<()> {
        let dev = Device::Cpu;
        let used = Var::new(&[1.0f32, 2.0], &dev)?;
        let zeroed = Var::new(&[1.0f32], &dev)?;
        let unused = Var::new(&[1.0f32], &dev)?;
        // `zeroed` is multiplied by 0, so its gradient exists but is zero.
        let loss = (used.as_tensor().sum_all()? + (zeroed.as_tensor() * 0.0)?.sum_all()?)?;
        let grads = loss.backward()?;
        let vars = vec![
            ("used".to_string(), used),
            ("zeroed".to_string(), zeroed),
            ("unused".to_string(), unused),
        ];
        assert_eq!(
            vars_without_gradient(&vars, &grads)?,
            vec!["zeroed", "unused"]
        );
        Ok(())
    }
}
