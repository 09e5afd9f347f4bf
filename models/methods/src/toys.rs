//! A toy denoiser for the rollout tests: ε = w·x.

use std::cell::Cell;

use candle_core::{Device, Tensor, Var};

use crate::spo::Denoiser;

/// ε = w·x for the policy, w₀·x (detached) for the reference; counts its calls.
pub(crate) struct Toy {
    pub w: Var,
    pub w0: f64,
    pub dev: Device,
    pub calls: Cell<usize>,
}

impl Toy {
    pub fn new(w: f64) -> Toy {
        let dev = Device::Cpu;
        Toy {
            w: Var::new(&[w as f32], &dev).unwrap(),
            w0: w,
            dev,
            calls: Cell::new(0),
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
