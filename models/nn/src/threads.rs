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
use std::sync::{Arc, Mutex, PoisonError};

use rayon::{ThreadPool, ThreadPoolBuilder};

thread_local! {
    /// This thread's pool and its size: each caller (a pipeline cell computing on its own thread)
    /// gets a pool of its own, so two cells that are each lent one core never queue behind each
    /// other on a shared one-thread pool. Only the last size asked for is kept, so a cell whose
    /// share changes does not accumulate idle threads.
    static POOL: RefCell<Option<(usize, Arc<ThreadPool>)>> = const { RefCell::new(None) };
    /// The CPU time of every pool this thread has built, shared with its [`CpuClock`]s.
    static POOL_TIME: Arc<Mutex<PoolTime>> = Arc::default();
}

/// The CPU time of the pools one thread has built: the threads of the pool it has now, and
/// what the threads of the pools it replaced had used when they were replaced.
#[derive(Default)]
struct PoolTime {
    retired: f64,
    clocks: Vec<libc::clockid_t>,
}

impl PoolTime {
    fn seconds(&self) -> f64 {
        self.retired + self.clocks.iter().map(|&c| clock_seconds(c)).sum::<f64>()
    }
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
    let clocks = pool
        .broadcast(|_| thread_clock())
        .into_iter()
        .collect::<candle_core::Result<Vec<_>>>()?;
    // the pool being replaced is idle (only this thread runs work on it): what its threads
    // used is final, and is kept before they end
    POOL_TIME.with(|t| {
        let mut t = t.lock().unwrap_or_else(PoisonError::into_inner);
        t.retired = t.seconds();
        t.clocks = clocks;
    });
    POOL.with(|p| *p.borrow_mut() = Some((threads, pool.clone())));
    Ok(pool)
}

/// Runs `f` on the pool of `threads` threads; the kernels it calls parallelise over exactly
/// those threads (none besides the one running `f` when `threads` is 1).
pub fn install<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> candle_core::Result<R> {
    Ok(pool(threads)?.install(f))
}

/// The CPU time of the threads a computation runs on: the thread that made the clock and
/// every thread of every pool that thread builds or has built (see [`install`]), so a cell whose
/// share of the cores grows mid-way, and whose pool is rebuilt larger, is still counted whole.
/// Readable from any thread, so a training loop can read it inside `install` as well as outside.
pub struct CpuClock {
    /// The calling thread's CPU-time clock (`pthread_getcpuclockid`).
    caller: libc::clockid_t,
    pools: Arc<Mutex<PoolTime>>,
}

impl CpuClock {
    /// The clock of the calling thread and its pools.
    pub fn new() -> candle_core::Result<CpuClock> {
        Ok(CpuClock {
            caller: thread_clock()?,
            pools: POOL_TIME.with(Arc::clone),
        })
    }

    /// Seconds of CPU those threads have used since they started.
    pub fn seconds(&self) -> f64 {
        let pools = self
            .pools
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .seconds();
        clock_seconds(self.caller) + pools
    }
}

/// The seconds a CPU-time clock reads; a clock whose thread has gone reads as no time.
fn clock_seconds(clock: libc::clockid_t) -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write; an unknown clock answers an error.
    match unsafe { libc::clock_gettime(clock, &mut ts) } {
        0 => ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9,
        _ => 0.0,
    }
}

/// The calling thread's CPU-time clock id.
fn thread_clock() -> candle_core::Result<libc::clockid_t> {
    let mut id: libc::clockid_t = 0;
    // SAFETY: `pthread_self` is the calling thread, alive for the call; `id` is a valid out
    // pointer.
    match unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut id) } {
        0 => Ok(id),
        e => Err(candle_core::Error::Msg(format!(
            "cannot read this thread's CPU clock: {}",
            std::io::Error::from_raw_os_error(e)
        ))),
    }
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

    /// Burns CPU until the calling thread's own clock has advanced by `secs`.
    fn burn(secs: f64) -> f64 {
        let clock = thread_clock().expect("a thread clock");
        let (t0, mut x) = (clock_seconds(clock), 0.0f64);
        while clock_seconds(clock) - t0 < secs {
            x += x.sin() + 1.0;
        }
        x
    }

    #[test]
    fn the_cpu_clock_counts_work_on_every_pool_thread_and_the_caller() -> candle_core::Result<()> {
        // on a thread of its own, so that its pools are its own
        std::thread::spawn(|| -> candle_core::Result<()> {
            let clock = CpuClock::new()?;
            let before = clock.seconds();
            // each pool thread burns 0.1 s of its own CPU: the clock must see both
            let sums = pool(2)?.broadcast(|_| burn(0.1));
            assert_eq!(sums.len(), 2);
            let pool_work = clock.seconds() - before;
            assert!(pool_work >= 0.2, "pool threads' CPU {pool_work} s < 0.2 s");
            // work on the calling thread counts too, and the clock can be read from elsewhere
            burn(0.05);
            let read_elsewhere = std::thread::scope(|s| s.spawn(|| clock.seconds()).join())
                .map_err(|_| candle_core::Error::Msg("thread panicked".into()))?;
            assert!(read_elsewhere - before >= 0.25);
            Ok(())
        })
        .join()
        .map_err(|_| candle_core::Error::Msg("thread panicked".into()))?
    }

    #[test]
    fn the_cpu_clock_keeps_what_replaced_pools_used() -> candle_core::Result<()> {
        // a cell lent one core, then two as the cells beside it finish: its pool is rebuilt,
        // and what the first pool's thread used must stay counted
        std::thread::spawn(|| -> candle_core::Result<()> {
            let clock = CpuClock::new()?;
            let before = clock.seconds();
            install(1, || burn(0.1))?;
            pool(2)?.broadcast(|_| burn(0.1));
            install(3, || burn(0.05))?;
            let used = clock.seconds() - before;
            assert!(used >= 0.35, "CPU {used} s < 0.35 s across three pools");
            Ok(())
        })
        .join()
        .map_err(|_| candle_core::Error::Msg("thread panicked".into()))?
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
