//! What a computed cell pays for its lease (docs/architecture.md, "Locks on a shared file
//! system"): acquire (private file, link, thread start) and release (thread join, rename
//! aside, read, unlink), N times on one directory. `cargo run --release -p spo-core --example
//! lease_cost -- DIR [N]`; BENCHMARKS.md has the numbers.

use std::time::Instant;

use spo_core::lease::Lease;

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().unwrap_or_else(|| ".".into()));
    let n: u32 = args.next().and_then(|s| s.parse().ok()).unwrap_or(2000);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("{}: {e}", dir.display());
        std::process::exit(1);
    }
    let t0 = Instant::now();
    for i in 0..n {
        let path = dir.join(format!("{i}.lease"));
        match Lease::acquire(&path, &mut |_| {}) {
            Ok(lease) => drop(lease),
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        }
    }
    let per = t0.elapsed().as_secs_f64() / f64::from(n);
    println!(
        "{n} leases taken and released in {}: {:.1} µs each",
        dir.display(),
        per * 1e6
    );
}
