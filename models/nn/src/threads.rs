//! The rayon pools that spo-nn's kernels run their parallel loops on.
//!
//! A kernel called from a thread outside rayon's pool hands every parallel loop to the pool and
//! sleeps until it returns: on a small model that hand-off (a futex wake and a context switch
//! per op) costs several percent of a training step, and with the global pool it also spreads
//! the work over every core whatever a cell's share is. [`install`] runs a whole step on a pool
//! of exactly `threads` threads instead, so that the kernels' loops run in place (one thread) or
//! are shared by work stealing (several). Each calling thread keeps one pool, rebuilt when the
//! size it asks for changes.

use std::cell::RefCell;
use std::sync::Arc;

use rayon::{ThreadPool, ThreadPoolBuilder};

thread_local! {
    /// This thread's pool and its size: each caller (a pipeline cell computing on its own thread)
    /// gets a pool of its own, so two cells that are each lent one core never queue behind each
    /// other on a shared one-thread pool. Only the last size asked for is kept, so a cell whose
    /// share changes does not accumulate idle threads.
    static POOL: RefCell<Option<(usize, Arc<ThreadPool>)>> = const { RefCell::new(None) };
}

/// The calling thread's pool of `threads` threads (at least one), built when the size asked
/// for changes.
pub fn pool(threads: usize) -> candle_core::Result<Arc<ThreadPool>> {
    let threads = threads.max(1);
    let kept = POOL.with(|p| {
        p.borrow()
            .as_ref()
            .filter(|(size, _)| *size == threads)
            .map(|(_, pool)| pool.clone())
    });
    if let Some(pool) = kept {
        return Ok(pool);
    }
    let pool = Arc::new(
        ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(move |i| format!("spo-nn-{threads}.{i}"))
            .build()
            .map_err(candle_core::Error::wrap)?,
    );
    POOL.with(|p| *p.borrow_mut() = Some((threads, pool.clone())));
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
        // only the last size is kept: asking for another size replaces it
        let three = pool(3)?;
        pool(2)?;
        assert!(!Arc::ptr_eq(&three, &pool(3)?));
        assert_eq!(install(0, rayon::current_num_threads)?, 1);
        Ok(())
    }

    #[test]
    fn each_calling_thread_gets_its_own_pools() -> candle_core::Result<()> {
        let here = pool(1)?;
        let there = std::thread::spawn(|| pool(1))
            .join()
            .map_err(|_| candle_core::Error::Msg("thread panicked".into()))??;
        assert!(!Arc::ptr_eq(&here, &there));
        Ok(())
    }
}
