//! A toy denoiser for the rollout tests: ε = w·x.

use std::cell::Cell;

use candle_core::{Device, Tensor, Var};

use crate::spo::{Denoiser, TrainingEps};

/// ε = w·x for the policy, w₀·x (detached) for the reference; counts its calls. With
/// `recompute`, its training ε comes detached with a backward of its own, as a checkpointed
/// network's does.
pub(crate) struct Toy {
    pub w: Var,
    pub w0: f64,
    pub dev: Device,
    pub calls: Cell<usize>,
    pub recompute: bool,
}

impl Toy {
    pub fn new(w: f64) -> Toy {
        let dev = Device::Cpu;
        Toy {
            w: Var::new(&[w as f32], &dev).unwrap(),
            w0: w,
            dev,
            calls: Cell::new(0),
            recompute: false,
        }
    }
}

impl Denoiser for Toy {
    type Prompts = usize;
    fn encode(&self, texts: &[&str]) -> candle_core::Result<usize> {
        Ok(texts.len())
    }
    fn eps(
        &self,
        rows: &usize,
        x: &Tensor,
        ts: &[usize],
        reference: bool,
    ) -> candle_core::Result<Tensor> {
        assert_eq!((*rows, ts.len()), (x.dim(0)?, x.dim(0)?), "prompts per row");
        self.calls.set(self.calls.get() + 1);
        if reference {
            (x * self.w0)?.detach().contiguous()
        } else {
            x.broadcast_mul(self.w.as_tensor())
        }
    }
    fn eps_for_training(
        &self,
        rows: &usize,
        x: &Tensor,
        ts: &[usize],
    ) -> candle_core::Result<TrainingEps<'_>> {
        let eps = self.eps(rows, x, ts, false)?;
        if !self.recompute {
            return Ok(TrainingEps::Graph(eps));
        }
        let x = x.clone();
        Ok(TrainingEps::Recomputed {
            eps: eps.detach(),
            backward: Box::new(move |g| {
                x.broadcast_mul(self.w.as_tensor())?
                    .mul(g)?
                    .sum_all()?
                    .backward()
            }),
        })
    }
    fn select(&self, _rows: &usize, picked: &[u32]) -> candle_core::Result<usize> {
        Ok(picked.len())
    }
    fn sample_size(&self) -> usize {
        4
    }
    fn channels(&self) -> usize {
        3
    }
    fn device(&self) -> &Device {
        &self.dev
    }
}
