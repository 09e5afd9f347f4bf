//! SHA-256 throughput on one core, as the store uses it: `cargo run --release -p spo-core --example hash_throughput [MiB]`.
//!
//! Measures (1) hashing an in-memory buffer and (2) writing a file through a `StageContext`
//! artifact writer, which hashes while writing, the path every committed artifact takes.

use std::io::Write;
use std::time::Instant;

use sha2::{Digest, Sha256};
use spo_core::{Params, StageContext};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1024);
    let chunk: Vec<u8> = (0..(1 << 20))
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let gib = mib as f64 / 1024.0;

    let t = Instant::now();
    let mut h = Sha256::new();
    for _ in 0..mib {
        h.update(&chunk);
    }
    let d = h.finalize();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "in-memory sha256: {mib} MiB in {secs:.3} s = {:.2} GiB/s ({})",
        gib / secs,
        hex::encode(&d[..4])
    );

    let dir = tempfile::tempdir()?;
    let mut cx = StageContext::detached(
        "bench",
        Params::default(),
        None,
        vec![],
        dir.path().join("out"),
        dir.path().join("scratch"),
    );
    let t = Instant::now();
    let mut w = cx.create("big.bin")?;
    for _ in 0..mib {
        w.write_all(&chunk)?;
    }
    w.finish()?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "artifact writer (hash + write + fsync): {mib} MiB in {secs:.3} s = {:.2} GiB/s",
        gib / secs
    );
    Ok(())
}
