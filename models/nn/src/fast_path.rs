//! Whether spo-nn's fused CPU kernels handle an op, and a process-wide switch that turns them off.
//!
//! Every layer here has two paths: a fused kernel with its own backward (f32 tensors on the CPU)
//! and the same maths composed from candle's ops (any device or dtype). [`applies`] chooses;
//! [`set_enabled`]`(false)` forces the composed path everywhere, so that a benchmark can time
//! candle's own ops on the same model in the same process. Flip it only between steps, never
//! while another thread is running a model.

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Tensor};

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the fused CPU kernels on (the default) or off for the whole process.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether the fused kernels are on.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Whether the fused kernels handle these operands: they are on, and every tensor is f32 on
/// the CPU.
pub fn applies(tensors: &[&Tensor]) -> bool {
    enabled()
        && tensors
            .iter()
            .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}
