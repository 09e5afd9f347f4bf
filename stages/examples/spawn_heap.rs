//! Does spawning a stage's process cost more as spo-pipe's heap grows? Times `sh -c true`
//! started the way `process_group.rs` starts commands (`Command::process_group`, no
//! `pre_exec`: std uses `posix_spawn`, i.e. `clone(CLONE_VM | CLONE_VFORK)`) against the same
//! spawn with an empty `pre_exec` hook (which forces `fork()` and copies the page tables).
//!
//! `cargo run --release -p spo-stages --example spawn_heap -- [spawns] [heap MiB ...]`

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Instant;

fn spawn_ms(n: usize, fork: bool) -> f64 {
    let t0 = Instant::now();
    for _ in 0..n {
        let mut c = Command::new("sh");
        c.args(["-c", "true"]).process_group(0);
        if fork {
            // SAFETY: the hook does nothing, so nothing async-signal-unsafe runs after fork.
            unsafe { c.pre_exec(|| Ok(())) };
        }
        let status = c.spawn().and_then(|mut ch| ch.wait());
        assert!(status.is_ok_and(|s| s.success()));
    }
    t0.elapsed().as_secs_f64() * 1e3 / n as f64
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = args.first().copied().unwrap_or(200);
    let sizes = if args.len() > 1 {
        args[1..].to_vec()
    } else {
        vec![0, 128, 512, 2048]
    };
    // Warm-up: the first spawns also page in `sh` and the dynamic loader.
    spawn_ms(n / 4 + 1, false);
    println!("| heap (MiB, touched) | posix_spawn (ms/spawn) | fork via pre_exec (ms/spawn) |");
    println!("|---:|---:|---:|");
    for mib in sizes {
        let heap = vec![1u8; mib << 20];
        let (spawn, fork) = (spawn_ms(n, false), spawn_ms(n, true));
        println!("| {mib} | {spawn:.3} | {fork:.3} |");
        std::hint::black_box(&heap);
    }
}
