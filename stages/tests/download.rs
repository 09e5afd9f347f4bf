//! The download kind against a loopback HTTP server and local files.

mod support;

use std::collections::HashMap;

use sha2::{Digest, Sha256};
use spo_core::{Pipeline, Plan, Registry, RunOptions, Store, run::run};

fn registry() -> Registry {
    Registry::new(vec![Box::new(spo_stages::download::Download)])
}

fn body(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Runs a one-stage pipeline downloading `url`; returns the failures and the store.
fn download(store: &Store, url: &str, sha256: &str) -> Vec<(String, String)> {
    let reg = registry();
    let text = format!(
        "[stage.get]\nkind = \"download\"\nparams = {{ url = \"{url}\", sha256 = \"{sha256}\", filename = \"data.bin\" }}\n"
    );
    let pipe = Pipeline::parse("p.toml", &text, &reg).unwrap();
    let plan = Plan::build(&pipe, &reg, &[]).unwrap();
    run(&pipe, &reg, store, &plan, &RunOptions::default(), &|_| {})
        .unwrap()
        .failed
}

#[test]
fn downloads_and_verifies() {
    let data = body(300_000);
    let srv = support::http::serve(
        HashMap::from([("/f.bin".to_string(), data.clone())]),
        None,
        4,
    );
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert!(download(&store, &format!("{}/f.bin", srv.base), &sha(&data)).is_empty());
    let key = store.keys().unwrap().pop().unwrap();
    let m = spo_core::Manifest::read(&store.cell_dir(&key)).unwrap();
    assert_eq!(m.files[0].sha256, sha(&data));
    assert_eq!(
        std::fs::read(store.cell_dir(&key).join("data.bin")).unwrap(),
        data
    );
    // Cached: no second request.
    assert!(download(&store, &format!("{}/f.bin", srv.base), &sha(&data)).is_empty());
    assert_eq!(srv.requests.lock().unwrap().len(), 1);
}

#[test]
fn a_hash_mismatch_is_an_error_and_stores_nothing() {
    let data = body(1000);
    let srv = support::http::serve(
        HashMap::from([("/f.bin".to_string(), data.clone())]),
        None,
        2,
    );
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let wrong = sha(b"something else");
    let failed = download(&store, &format!("{}/f.bin", srv.base), &wrong);
    assert_eq!(failed.len(), 1);
    let msg = &failed[0].1;
    assert!(
        msg.contains("sha256 mismatch")
            && msg.contains(&wrong)
            && msg.contains(&sha(&data))
            && msg.contains("/f.bin"),
        "{msg}"
    );
    assert!(store.keys().unwrap().is_empty());
}

#[test]
fn an_interrupted_download_resumes_with_a_range_request() {
    let data = body(2_000_000);
    let srv = support::http::serve(
        HashMap::from([("/big.bin".to_string(), data.clone())]),
        Some(700_000),
        4,
    );
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let url = format!("{}/big.bin", srv.base);
    let failed = download(&store, &url, &sha(&data));
    assert_eq!(
        failed.len(),
        1,
        "the cut connection fails the first attempt"
    );
    assert!(failed[0].1.contains("rerun to resume"), "{}", failed[0].1);
    assert!(store.keys().unwrap().is_empty());
    assert!(download(&store, &url, &sha(&data)).is_empty());
    let reqs = srv.requests.lock().unwrap().clone();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].1, None);
    let range = reqs[1].1.clone().expect("the second request resumes");
    let from: usize = range
        .trim_start_matches("bytes=")
        .trim_end_matches('-')
        .parse()
        .unwrap();
    assert!(from > 0 && from <= 700_000, "{range}");
    let key = store.keys().unwrap().pop().unwrap();
    assert_eq!(
        std::fs::read(store.cell_dir(&key).join("data.bin")).unwrap(),
        data
    );
}

#[test]
fn local_files_and_missing_ones() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("runs")).unwrap();
    let src = dir.path().join("in.txt");
    std::fs::write(&src, b"hello").unwrap();
    assert!(download(&store, src.to_str().unwrap(), &sha(b"hello")).is_empty());
    let failed = download(
        &store,
        dir.path().join("absent.txt").to_str().unwrap(),
        &sha(b"x"),
    );
    assert!(failed[0].1.contains("absent.txt"), "{}", failed[0].1);
}

#[test]
fn a_malformed_pin_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let failed = download(&store, "/dev/null", "abc");
    assert!(
        failed[0].1.contains("param `sha256`") && failed[0].1.contains("64 hex digits"),
        "{}",
        failed[0].1
    );
}
