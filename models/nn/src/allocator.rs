//! Keeping freed tensor buffers in the process heap (glibc).
//!
//! candle allocates a fresh buffer for every op output. glibc serves allocations above
//! `M_MMAP_THRESHOLD` (128 KiB by default, growing adaptively) with `mmap` and returns them with
//! `munmap`, so every large intermediate of a training step is page-faulted in anew: on the tiny
//! UNet benchmark 40 % of CPU time was page faults. [`retain_freed_memory`] raises the mmap and
//! trim thresholds so freed buffers are reused; a training binary calls it once at start-up.
//! (Equivalent environment: `MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=2147483647`.)

/// Raises glibc's mmap and trim thresholds (no-op on other C libraries). Returns whether the
/// allocator accepted both settings.
pub fn retain_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only adjusts allocator parameters; 32 MiB is glibc's largest accepted
        // mmap threshold on 64-bit targets, and any trim threshold is valid.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    #[test]
    fn glibc_accepts_both_thresholds() {
        assert!(super::retain_freed_memory());
    }
}
