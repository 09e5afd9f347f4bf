//! The hub kind against a loopback server laid out like the Hugging Face hub
//! (`/{repo}/resolve/{revision}/{file}`), with a gated repo.
//!
//! HF_ENDPOINT and HF_TOKEN are process-wide, so the cases run in one test, in order.

mod support;

use std::collections::HashMap;

use sha2::{Digest, Sha256};
use spo_core::{Manifest, Pipeline, Plan, Registry, RunOptions, Store, run::run};

const REV: &str = "0123456789abcdef0123456789abcdef01234567";

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn registry() -> Registry {
    Registry::new(vec![Box::new(spo_stages::hub::Hub)])
}

/// Runs one `hub` stage with `params` (TOML inline-table body); returns its failures.
fn fetch(store: &Store, params: &str) -> Vec<(String, String)> {
    let reg = registry();
    let text = format!("[stage.weights]\nkind = \"hub\"\nparams = {{ {params} }}\n");
    let pipe = Pipeline::parse("p.toml", &text, &reg).unwrap();
    let plan = Plan::build(&pipe, &reg, &[]).unwrap();
    run(&pipe, &reg, store, &plan, &RunOptions::default(), &|_| {})
        .unwrap()
        .failed
}

/// A repo's file: its path and bytes.
type RepoFile<'a> = (&'a str, &'a [u8]);

fn params(repo: &str, files: &[RepoFile<'_>]) -> String {
    let paths: Vec<String> = files.iter().map(|(p, _)| format!("\"{p}\"")).collect();
    let digests: Vec<String> = files
        .iter()
        .map(|(_, b)| format!("\"{}\"", sha(b)))
        .collect();
    format!(
        "repo = \"{repo}\", revision = \"{REV}\", files = [{}], sha256 = [{}]",
        paths.join(", "),
        digests.join(", ")
    )
}

#[test]
fn hub_files_are_fetched_pinned_laid_out_like_the_repo_and_gated_repos_need_a_token() {
    let config = b"{\"in_channels\": 4}".to_vec();
    let weights: Vec<u8> = (0..200_000).map(|i| (i % 253) as u8).collect();
    let served = HashMap::from([
        (
            format!("/org/sd/resolve/{REV}/unet/config.json"),
            config.clone(),
        ),
        (
            format!("/org/sd/resolve/{REV}/unet/model.safetensors"),
            weights.clone(),
        ),
        (
            format!("/org/gated/resolve/{REV}/model_index.json"),
            config.clone(),
        ),
        (
            format!("/datasets/org/prompts/resolve/{REV}/p.txt"),
            b"a cat\n".to_vec(),
        ),
    ]);
    let srv = support::http::serve_gated(
        served,
        None,
        64,
        Some(("/org/gated/".into(), "secret".into())),
    );
    // SAFETY: this test binary has one test, and no other thread reads the environment.
    unsafe {
        std::env::set_var("HF_ENDPOINT", &srv.base);
        std::env::remove_var("HF_TOKEN");
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();

    let files: &[RepoFile<'_>] = &[
        ("unet/config.json", &config),
        ("unet/model.safetensors", &weights),
    ];
    assert_eq!(fetch(&store, &params("org/sd", files)), vec![]);
    let key = store.keys().unwrap().pop().unwrap();
    let cell = store.cell_dir(&key);
    assert_eq!(
        std::fs::read(cell.join("unet/model.safetensors")).unwrap(),
        weights
    );
    let m = Manifest::read(&cell).unwrap();
    let paths: Vec<&str> = m.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["unet/config.json", "unet/model.safetensors"]);
    assert_eq!(fetch(&store, &params("org/sd", files)), vec![], "cached");
    assert_eq!(srv.requests.lock().unwrap().len(), 2, "no second fetch");

    // A dataset repo resolves under /datasets/.
    let ds = format!(
        "{}, repo_type = \"dataset\"",
        params("org/prompts", &[("p.txt", b"a cat\n")])
    );
    assert_eq!(fetch(&store, &ds), vec![]);

    // Bad pins are refused by name, and nothing is stored.
    let before = store.keys().unwrap().len();
    let wrong = params("org/sd", &[("unet/config.json", b"something else")]);
    let err = &fetch(&store, &wrong)[0].1;
    assert!(
        err.contains("unet/config.json") && err.contains("sha256 mismatch"),
        "{err}"
    );
    let missing = params("org/sd", &[("vae/config.json", &config)]);
    let err = &fetch(&store, &missing)[0].1;
    assert!(
        err.contains("no file `vae/config.json`") && err.contains(REV),
        "{err}"
    );
    let gated = params("org/gated", &[("model_index.json", &config)]);
    let err = &fetch(&store, &gated)[0].1;
    assert!(
        err.contains("org/gated") && err.contains("set HF_TOKEN"),
        "{err}"
    );
    unsafe { std::env::set_var("HF_TOKEN", "wrong") };
    let err = &fetch(&store, &gated)[0].1;
    assert!(err.contains("HF_TOKEN has no access"), "{err}");
    assert_eq!(store.keys().unwrap().len(), before);

    unsafe { std::env::set_var("HF_TOKEN", "secret") };
    assert_eq!(fetch(&store, &gated), vec![]);

    for (bad, names) in [
        (
            format!(
                "repo = \"org/sd\", revision = \"main\", files = [\"a\"], sha256 = [\"{}\"]",
                sha(b"")
            ),
            "40 hex",
        ),
        (
            format!(
                "repo = \"org/sd\", revision = \"{REV}\", files = [\"../a\"], sha256 = [\"{}\"]",
                sha(b"")
            ),
            "relative path",
        ),
        (
            format!(
                "repo = \"org/sd\", revision = \"{REV}\", files = [\"a\", \"b\"], sha256 = [\"{}\"]",
                sha(b"")
            ),
            "one per file",
        ),
        (
            format!(
                "repo = \"sd\", revision = \"{REV}\", files = [\"a\"], sha256 = [\"{}\"]",
                sha(b"")
            ),
            "owner/name",
        ),
        (
            format!("repo = \"org/sd\", revision = \"{REV}\", files = [\"a\"], sha256 = [\"abc\"]"),
            "the digest of `a`, `abc`, is not 64 hex digits",
        ),
        (
            format!(
                "repo = \"org/sd\", revision = \"{REV}\", files = [\"a\", \"a\"], sha256 = [\"{0}\", \"{0}\"]",
                sha(b"")
            ),
            "`a` is listed twice",
        ),
        (
            format!("repo = \"org/sd\", revision = \"{REV}\", files = [], sha256 = []"),
            "no files listed",
        ),
        (
            format!(
                "repo = \"org/sd\", revision = \"{REV}\", files = [\"manifest.json\"], sha256 = [\"{}\"]",
                sha(b"")
            ),
            "clash with the cell's own manifest",
        ),
    ] {
        let err = &fetch(&store, &bad)[0].1;
        assert!(err.contains(names), "{bad}: {err}");
    }
}
