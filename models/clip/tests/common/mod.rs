//! Shared helpers of spo-clip's integration tests: fixture paths, goldens and the synthetic
//! pixel input of tests/fixtures/clip/make_fixtures.py.

#![allow(dead_code)]

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use serde_json::Value;

/// tests/fixtures/clip in the repository.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/clip")
}

/// The shared read-only data folder (../shared/data beside the repository), if present.
pub fn shared_data() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    if dir.is_dir() {
        Some(dir)
    } else {
        println!(
            "SKIPPED: shared data folder {} is absent (it holds the real LAION head and the prompt sets)",
            dir.display()
        );
        None
    }
}

/// A golden JSON file from tests/fixtures/clip/goldens.
pub fn golden(name: &str) -> Value {
    let path = fixtures().join("goldens").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A flat f64 list from a golden value.
pub fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("golden list")
        .iter()
        .map(|x| x.as_f64().expect("golden number"))
        .collect()
}

/// `(b, 77)` token ids from a golden list of lists.
pub fn ids(v: &Value) -> Tensor {
    let rows: Vec<Vec<u32>> = v
        .as_array()
        .expect("id rows")
        .iter()
        .map(|r| {
            r.as_array()
                .expect("id row")
                .iter()
                .map(|x| x.as_u64().expect("id") as u32)
                .collect()
        })
        .collect();
    let n = rows[0].len();
    let b = rows.len();
    Tensor::from_vec(rows.concat(), (b, n), &Device::Cpu).expect("ids tensor")
}

/// The synthetic input 1.5·sin(0.05x + 0.07y + 1.3c + 0.9b), `(batch, 3, 224, 224)`.
pub fn test_pixels(batch: usize) -> Tensor {
    let mut v = Vec::with_capacity(batch * 3 * 224 * 224);
    for b in 0..batch {
        for c in 0..3 {
            for y in 0..224 {
                for x in 0..224 {
                    let arg = 0.05 * x as f64 + 0.07 * y as f64 + 1.3 * c as f64 + 0.9 * b as f64;
                    v.push((1.5 * arg.sin()) as f32);
                }
            }
        }
    }
    Tensor::from_vec(v, (batch, 3, 224, 224), &Device::Cpu).expect("pixels")
}

/// Flattened values of a tensor as f64.
pub fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(candle_core::DType::F64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f64>())
        .expect("tensor values")
}

/// Asserts `|a − b| ≤ tol` elementwise and returns the largest difference.
pub fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let worst = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(
        worst <= tol,
        "{what}: max |diff| {worst:e} > {tol:e}\n got {got:?}\nwant {want:?}"
    );
    println!("{what}: max |diff| {worst:.2e} (tolerance {tol:e})");
    worst
}
