//! Borrowing the f32 elements of contiguous CPU storage, for the fused kernels' forward passes
//! (which receive storage) and backward passes (which receive tensors).

use candle_core::{CpuStorage, Layout, Result, Storage, StorageRef, Tensor};

/// The elements of contiguous `storage` under `layout`; `what` names the operand in errors.
pub(crate) fn storage_slice<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> Result<&'a [f32]> {
    if !layout.is_contiguous() {
        candle_core::bail!("{what} must be contiguous");
    }
    let start = layout.start_offset();
    Ok(&storage.as_slice::<f32>()?[start..start + layout.shape().elem_count()])
}

/// A read lock on a contiguous f32 CPU tensor's storage, giving its elements without a copy.
pub(crate) struct TensorSlice<'a> {
    guard: StorageRef<'a>,
    layout: &'a Layout,
    what: &'static str,
}

impl<'a> TensorSlice<'a> {
    /// Locks `tensor`, which must be contiguous f32 on the CPU (call `.contiguous()` first).
    pub(crate) fn new(tensor: &'a Tensor, what: &'static str) -> Self {
        let (guard, layout) = tensor.storage_and_layout();
        Self {
            guard,
            layout,
            what,
        }
    }

    /// The tensor's elements in row-major order.
    pub(crate) fn get(&self) -> Result<&[f32]> {
        match &*self.guard {
            Storage::Cpu(storage) => storage_slice(storage, self.layout, self.what),
            _ => candle_core::bail!("{} must be on the CPU", self.what),
        }
    }
}

/// A gradient computed into `grad` (when it was wanted) as a tensor shaped like `like`.
pub(crate) fn grad_tensor(grad: Option<Vec<f32>>, like: &Tensor) -> Result<Option<Tensor>> {
    grad.map(|g| Tensor::from_vec(g, like.shape(), like.device()))
        .transpose()
}
