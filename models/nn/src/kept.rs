//! What a fused op's forward pass keeps for its backward pass (softmax probabilities,
//! activations), so that backward need not recompute them, within a memory bound.

use std::sync::{Mutex, MutexGuard};

use candle_core::Result;

/// The most f32 values one op keeps for backward: 64 MiB. Above it, backward recomputes them.
const MAX_VALUES: usize = 1 << 24;

/// Values kept from forward for backward, when a gradient will be taken and they fit.
#[derive(Debug)]
pub(crate) struct Kept<T> {
    op: &'static str,
    wanted: bool,
    values: Mutex<Option<T>>,
}

impl<T> Kept<T> {
    /// Nothing kept yet; `wanted` says a gradient will be taken. `op` names the op in errors.
    pub(crate) fn new(op: &'static str, wanted: bool) -> Self {
        Self {
            op,
            wanted,
            values: Mutex::new(None),
        }
    }

    /// Whether forward should keep `len` values: a gradient will be taken and they fit.
    pub(crate) fn wants(&self, len: usize) -> bool {
        self.wanted && len <= MAX_VALUES
    }

    /// Keeps `values` for backward.
    pub(crate) fn store(&self, values: T) -> Result<()> {
        *self.get()? = Some(values);
        Ok(())
    }

    /// The kept values, `None` when forward kept none.
    pub(crate) fn get(&self) -> Result<MutexGuard<'_, Option<T>>> {
        self.values
            .lock()
            .map_err(|_| candle_core::Error::Msg(format!("{}: kept values poisoned", self.op)))
    }
}
