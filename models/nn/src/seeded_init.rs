//! A `VarBuilder` that creates trainable `Var`s from a [`SeededRng`].
//!
//! `VarBuilder::from_varmap` initialises new variables from candle's unseedable thread RNG. This
//! backend fills the same `VarMap` but draws every initial value from a seeded stream, in the
//! order the model asks for its weights, so building a model twice with one seed gives identical
//! weights. A name already in the map is returned as is (shape-checked), as `VarMap::get` does.

use std::sync::Mutex;

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::init::NormalOrUniform;
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};

use crate::rng::SeededRng;

struct SeededBackend {
    varmap: VarMap,
    rng: Mutex<SeededRng>,
}

/// A `VarBuilder` over `varmap` whose new variables are drawn from `SeededRng::new(seed)`.
pub fn seeded_var_builder(
    varmap: &VarMap,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> VarBuilder<'static> {
    let backend = SeededBackend {
        varmap: varmap.clone(),
        rng: Mutex::new(SeededRng::new(seed)),
    };
    VarBuilder::from_backend(Box::new(backend), dtype, device.clone())
}

/// Every variable of `varmap` with its dotted name, sorted by name.
pub fn named_vars(varmap: &VarMap) -> Result<Vec<(String, Var)>> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("var map lock poisoned".into()))?;
    let mut vars: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(vars)
}

fn draw(
    rng: &mut SeededRng,
    init: Init,
    shape: &Shape,
    dtype: DType,
    dev: &Device,
) -> Result<Tensor> {
    match init {
        Init::Const(value) => Tensor::full(value as f32, shape, dev)?.to_dtype(dtype),
        Init::Randn { mean, stdev } => rng.normal(shape, mean, stdev, dtype, dev),
        Init::Uniform { lo, up } => rng.uniform(shape, lo, up, dtype, dev),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let fan = fan.for_shape(shape);
            let std = non_linearity.gain() / (fan as f64).sqrt();
            match dist {
                NormalOrUniform::Uniform => {
                    let bound = 3f64.sqrt() * std;
                    rng.uniform(shape, -bound, bound, dtype, dev)
                }
                NormalOrUniform::Normal => rng.normal(shape, 0.0, std, dtype, dev),
            }
        }
    }
}

impl SimpleBackend for SeededBackend {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut data = self
            .varmap
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("var map lock poisoned".into()))?;
        if let Some(var) = data.get(name) {
            if var.shape() != &s {
                return Err(candle_core::Error::UnexpectedShape {
                    msg: format!("shape mismatch for {name}"),
                    expected: s,
                    got: var.shape().clone(),
                });
            }
            return Ok(var.as_tensor().clone());
        }
        let mut rng = self
            .rng
            .lock()
            .map_err(|_| candle_core::Error::Msg("seeded rng lock poisoned".into()))?;
        let var = Var::from_tensor(&draw(&mut rng, h, &s, dtype, dev)?)?;
        let tensor = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        let data = self
            .varmap
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("var map lock poisoned".into()))?;
        data.get(name)
            .map(|v| v.as_tensor().clone())
            .ok_or_else(|| candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            })
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap
            .data()
            .lock()
            .map(|d| d.contains_key(name))
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(seed: u64) -> Result<(VarMap, Tensor)> {
        let varmap = VarMap::new();
        let vb = seeded_var_builder(&varmap, seed, DType::F32, &Device::Cpu);
        let w = vb.pp("layer").get_with_hints(
            (4, 3),
            "weight",
            candle_nn::init::DEFAULT_KAIMING_NORMAL,
        )?;
        Ok((varmap, w))
    }

    #[test]
    fn same_seed_gives_identical_weights_registered_as_vars() -> Result<()> {
        let (map_a, a) = build(11)?;
        let (_, b) = build(11)?;
        let (_, c) = build(12)?;
        assert_eq!(a.to_vec2::<f32>()?, b.to_vec2::<f32>()?);
        assert_ne!(a.to_vec2::<f32>()?, c.to_vec2::<f32>()?);
        let names: Vec<String> = named_vars(&map_a)?.into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, vec!["layer.weight".to_string()]);
        Ok(())
    }

    #[test]
    fn existing_name_with_other_shape_is_an_error() -> Result<()> {
        let (varmap, _) = build(1)?;
        let vb = seeded_var_builder(&varmap, 1, DType::F32, &Device::Cpu);
        assert!(vb.pp("layer").get((2, 2), "weight").is_err());
        Ok(())
    }
}
