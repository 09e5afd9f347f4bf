//! A seeded random number generator for tensors.
//!
//! candle's CPU backend cannot be seeded (`Device::Cpu.set_seed` errors), and every CPU
//! `randn`/`rand` and every `VarMap` initialiser draws from the thread RNG. All randomness in
//! spo-pipe (initial weights, diffusion noise, timesteps, shuffles) therefore comes from this
//! ChaCha8 stream and reaches candle through `Tensor::from_vec`, which makes CPU runs
//! reproducible and lets a checkpoint save the exact stream position.

use candle_core::{DType, Device, Result, Shape, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

/// A reproducible random stream (ChaCha8) that draws tensors and indices.
#[derive(Debug, Clone)]
pub struct SeededRng {
    inner: ChaCha8Rng,
}

/// The exact position of a [`SeededRng`], for checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    /// The 32-byte ChaCha key derived from the seed.
    pub key: [u8; 32],
    /// The ChaCha stream id.
    pub stream: u64,
    /// How many 32-bit words of the stream have been used.
    pub word_pos: u128,
}

impl SeededRng {
    /// A stream determined by `seed` alone.
    pub fn new(seed: u64) -> Self {
        Self {
            inner: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// Tensor of independent N(mean, std²) draws, generated in f32 and cast to `dtype`.
    pub fn normal(
        &mut self,
        shape: impl Into<Shape>,
        mean: f64,
        std: f64,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let shape = shape.into();
        let (mean, std) = (mean as f32, std as f32);
        let values: Vec<f32> = (0..shape.elem_count())
            .map(|_| {
                let z: f32 = StandardNormal.sample(&mut self.inner);
                mean + std * z
            })
            .collect();
        Tensor::from_vec(values, shape, device)?.to_dtype(dtype)
    }

    /// Tensor of independent U[lo, hi) draws, generated in f32 and cast to `dtype`.
    pub fn uniform(
        &mut self,
        shape: impl Into<Shape>,
        lo: f64,
        hi: f64,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let shape = shape.into();
        let (lo, hi) = (lo as f32, hi as f32);
        let values: Vec<f32> = (0..shape.elem_count())
            .map(|_| lo + (hi - lo) * self.inner.random::<f32>())
            .collect();
        Tensor::from_vec(values, shape, device)?.to_dtype(dtype)
    }

    /// `n` independent integers drawn uniformly from `0..upper` (`upper` > 0).
    pub fn indices(&mut self, n: usize, upper: usize) -> Vec<usize> {
        (0..n).map(|_| self.inner.random_range(0..upper)).collect()
    }

    /// A uniformly random permutation of `0..n` (Fisher–Yates).
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.inner.random_range(0..=i);
            order.swap(i, j);
        }
        order
    }

    /// An independent child stream, derived from (and advancing) this one.
    pub fn fork(&mut self) -> Self {
        Self {
            inner: ChaCha8Rng::seed_from_u64(self.inner.random()),
        }
    }

    /// The exact stream position, to be restored with [`SeededRng::from_state`].
    pub fn state(&self) -> RngState {
        RngState {
            key: self.inner.get_seed(),
            stream: self.inner.get_stream(),
            word_pos: self.inner.get_word_pos(),
        }
    }

    /// The stream at a saved position.
    pub fn from_state(state: RngState) -> Self {
        let mut inner = ChaCha8Rng::from_seed(state.key);
        inner.set_stream(state.stream);
        inner.set_word_pos(state.word_pos);
        Self { inner }
    }

    /// The underlying generator, for `rand` APIs not wrapped here.
    pub fn generator(&mut self) -> &mut ChaCha8Rng {
        &mut self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_tensor_and_different_seed_differs() -> Result<()> {
        let dev = Device::Cpu;
        let a = SeededRng::new(7).normal((3, 4), 0.0, 1.0, DType::F32, &dev)?;
        let b = SeededRng::new(7).normal((3, 4), 0.0, 1.0, DType::F32, &dev)?;
        let c = SeededRng::new(8).normal((3, 4), 0.0, 1.0, DType::F32, &dev)?;
        assert_eq!(a.to_vec2::<f32>()?, b.to_vec2::<f32>()?);
        assert_ne!(a.to_vec2::<f32>()?, c.to_vec2::<f32>()?);
        Ok(())
    }

    #[test]
    fn normal_draws_have_the_requested_moments() -> Result<()> {
        let xs = SeededRng::new(1).normal(20_000, 2.0, 3.0, DType::F32, &Device::Cpu)?;
        let mean = xs.mean_all()?.to_scalar::<f32>()?;
        let std = xs.var(0)?.sqrt()?.to_scalar::<f32>()?;
        assert!((mean - 2.0).abs() < 0.1, "mean {mean}");
        assert!((std - 3.0).abs() < 0.1, "std {std}");
        Ok(())
    }

    #[test]
    fn uniform_draws_stay_in_range() -> Result<()> {
        let xs = SeededRng::new(2).uniform(1000, -0.5, 0.25, DType::F32, &Device::Cpu)?;
        let v = xs.to_vec1::<f32>()?;
        assert!(v.iter().all(|&x| (-0.5..0.25).contains(&x)));
        Ok(())
    }

    #[test]
    fn restored_state_continues_the_same_stream() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = SeededRng::new(3);
        rng.normal(17, 0.0, 1.0, DType::F32, &dev)?;
        let saved = rng.state();
        let next = rng
            .normal(5, 0.0, 1.0, DType::F32, &dev)?
            .to_vec1::<f32>()?;
        let mut restored = SeededRng::from_state(saved);
        let again = restored
            .normal(5, 0.0, 1.0, DType::F32, &dev)?
            .to_vec1::<f32>()?;
        assert_eq!(next, again);
        Ok(())
    }

    #[test]
    fn permutation_is_a_permutation() {
        let mut p = SeededRng::new(4).permutation(50);
        assert_ne!(p, (0..50).collect::<Vec<_>>());
        p.sort_unstable();
        assert_eq!(p, (0..50).collect::<Vec<_>>());
    }
}
