//! The rayon pools that spo-nn's kernels run their parallel loops on.
//!
//! A kernel called from a thread outside rayon's pool hands every parallel loop to the pool and
//! sleeps until it returns: on a small model that hand-off (a futex wake and a context switch
//! per op) costs several percent of a training step, and with the global pool it also spreads
//! the work over every core whatever a cell's share is. [`install`] runs a whole step on a pool
//! of exactly `threads` threads instead, so that the kernels' loops run in place (one thread) or
//! are shared by work stealing (several). Pools are built once per size and kept.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use rayon::{ThreadPool, ThreadPoolBuilder};

/// The process-wide pool of `threads` threads (at least one), built on first use.
pub fn pool(threads: usize) -> candle_core::Result<Arc<ThreadPool>> {
    static POOLS: OnceLock<Mutex<HashMap<usize, Arc<ThreadPool>>>> = OnceLock::new();
    let threads = threads.max(1);
    let mut pools = POOLS
        .get_or_init(Default::default)
        .lock()
        .map_err(|_| candle_core::Error::Msg("thread pool registry poisoned".into()))?;
    if let Some(pool) = pools.get(&threads) {
        return Ok(pool.clone());
    }
    let pool = Arc::new(
        ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(move |i| format!("spo-nn-{threads}.{i}"))
            .build()
            .map_err(candle_core::Error::wrap)?,
    );
    pools.insert(threads, pool.clone());
    Ok(pool)
}

/// Runs `f` on the pool of `threads` threads; the kernels it calls parallelise over exactly
/// those threads (none besides the one running `f` when `threads` is 1).
pub fn install<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> candle_core::Result<R> {
    Ok(pool(threads)?.install(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_runs_on_a_pool_of_the_requested_size_and_reuses_it() -> candle_core::Result<()> {
        assert_eq!(install(1, rayon::current_num_threads)?, 1);
        assert_eq!(install(3, rayon::current_num_threads)?, 3);
        assert!(install(1, || rayon::current_thread_index().is_some())?);
        assert!(Arc::ptr_eq(&pool(3)?, &pool(3)?));
        assert_eq!(install(0, rayon::current_num_threads)?, 1);
        Ok(())
    }
}
