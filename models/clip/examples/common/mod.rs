//! What the CLIP benchmarks share: running as `spo-pipe` runs, and their statistics.

/// Sets up the process as `spo-pipe`'s main does: candle's elementwise ops on the calling thread
/// (its barrier pool would spin on the cores spo-nn's kernels use) and glibc keeping freed
/// buffers. Returns the threads to run on (`RAYON_NUM_THREADS`, else every core).
///
/// # Safety
/// Call first in `main`, before any thread exists (it sets an environment variable).
pub unsafe fn as_spo_pipe() -> usize {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: the caller guarantees no other thread exists yet.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
    spo_nn::allocator::retain_freed_memory();
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The median of `xs` (the upper one of an even count).
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}
