//! The real-weights path on a CPU: a tiny random-weight SD-1.5-shaped diffusers pipeline
//! (tests/fixtures/sd/sd15_tiny, in the real layouts) served by a loopback server laid out like
//! the Hugging Face hub, fetched by a `hub` stage, sampled by `sd-sample` for the prompts of a
//! `prompts` stage; and what `sd-sample` says about folders that do not fit.
//!
//! HF_ENDPOINT is process-wide, so the cases run in one test, in order.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use arrow_array::{BinaryArray, Int64Array, RecordBatch};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sha2::{Digest, Sha256};
use spo_core::{Pipeline, Plan, Registry, RunOptions, Store, run::run};

const REV: &str = "0123456789abcdef0123456789abcdef01234567";
const PROMPTS: &[u8] = b"a photo of a cat\nan astronaut riding a horse\na red cube on a table\n";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/sd/sd15_tiny")
}

/// The fixture's files: repo path → bytes, in path order.
fn repo_files() -> BTreeMap<String, Vec<u8>> {
    let root = fixture();
    walkdir::WalkDir::new(&root)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let rel = e
                .path()
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (rel, std::fs::read(e.path()).unwrap())
        })
        .collect()
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn registry() -> Registry {
    Registry::new(vec![
        Box::new(spo_stages::hub::Hub),
        Box::new(spo_stages::download::Download),
        Box::new(spo_stages::prompts::Prompts),
        Box::new(spo_stages::sd_sample::SdSample),
    ])
}

/// A pipeline: `repo` at REV with `files` through `hub`, the served prompt file, and
/// `sd-sample` with `params`.
fn pipeline(base: &str, repo: &str, files: &BTreeMap<String, Vec<u8>>, params: &str) -> String {
    let quoted = |v: Vec<String>| {
        v.iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        r#"[pipeline]
seeds = [0, 1]

[stage.sd15]
kind = "hub"
params = {{ repo = "{repo}", revision = "{REV}", files = [{}], sha256 = [{}] }}

[stage.prompt-file]
kind = "download"
params = {{ url = "{base}/prompts.txt", sha256 = "{}" }}

[stage.prompts]
kind = "prompts"
needs = ["prompt-file"]
params = {{ format = "lines" }}

[stage.samples]
kind = "sd-sample"
needs = ["sd15", "prompts"]
params = {{ {params} }}
"#,
        quoted(files.keys().cloned().collect()),
        quoted(files.values().map(|b| sha(b)).collect()),
        sha(PROMPTS),
    )
}

/// Runs `text` on `store`; returns the failures (stage, message).
fn run_pipeline(store: &Store, text: &str) -> Vec<(String, String)> {
    let reg = registry();
    let pipe = Pipeline::parse("pipeline.toml", text, &reg).unwrap();
    let plan = Plan::build(&pipe, &reg, &[]).unwrap();
    run(&pipe, &reg, store, &plan, &RunOptions::default(), &|_| {})
        .unwrap()
        .failed
}

/// The committed cells of kind `sd-sample`: their samples.parquet, read.
fn sample_tables(store: &Store) -> Vec<RecordBatch> {
    let mut out = Vec::new();
    for key in store.keys().unwrap() {
        let path = store.cell_dir(&key).join("samples.parquet");
        if path.is_file() {
            let reader =
                ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap())
                    .unwrap()
                    .build()
                    .unwrap();
            out.extend(reader.map(Result::unwrap));
        }
    }
    out
}

fn images(batch: &RecordBatch) -> Vec<Vec<u8>> {
    let col = batch.column_by_name("image").unwrap();
    let col = col.as_any().downcast_ref::<BinaryArray>().unwrap();
    col.iter().map(|b| b.unwrap().to_vec()).collect()
}

#[test]
fn a_hub_served_sd15_pipeline_samples_reproducibly_and_misfits_are_named() {
    let files = repo_files();
    let mut served: HashMap<String, Vec<u8>> =
        HashMap::from([("/prompts.txt".into(), PROMPTS.to_vec())]);
    // Variants of the repo that do not fit an SD-1.5 stage, one file changed in each.
    let edit = |path: &str, from: &str, to: &str| {
        let mut f = files.clone();
        let text = String::from_utf8(f[path].clone()).unwrap();
        assert!(text.contains(from), "{path} has no `{from}`");
        f.insert(path.into(), text.replacen(from, to, 1).into_bytes());
        f
    };
    let xl = edit(
        "unet/config.json",
        "\"addition_embed_type\": null",
        "\"addition_embed_type\": \"text_time\"",
    );
    let latent8 = edit(
        "vae/config.json",
        "\"latent_channels\": 4",
        "\"latent_channels\": 8",
    );
    let small_vocab = edit(
        "tokenizer/vocab.json",
        "\"<|endoftext|>\": 1001",
        "\"<|endoftext|>\": 1001, \"extra\": 1002",
    );
    let repos = [
        ("org/sd15", &files),
        ("org/xl", &xl),
        ("org/latent8", &latent8),
        ("org/vocab", &small_vocab),
    ];
    for (repo, f) in repos {
        for (path, bytes) in f.iter() {
            served.insert(format!("/{repo}/resolve/{REV}/{path}"), bytes.clone());
        }
    }
    let srv = support::http::serve(served, None, 1000);
    // SAFETY: this test binary has one test, and no other thread reads the environment.
    unsafe {
        std::env::set_var("HF_ENDPOINT", &srv.base);
        std::env::remove_var("HF_TOKEN");
    }
    let params = "steps = 3, per_prompt = 2, batch = 4";
    let text = pipeline(&srv.base, "org/sd15", &files, params);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(run_pipeline(&store, &text), vec![]);
    let tables = sample_tables(&store);
    assert_eq!(tables.len(), 2, "one samples table per seed");
    for t in &tables {
        assert_eq!(t.num_rows(), 6, "3 prompts × 2 images");
        let idx = t.column_by_name("prompt_index").unwrap();
        let idx: Vec<i64> = idx
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .values()
            .to_vec();
        assert_eq!(idx, vec![0, 0, 1, 1, 2, 2]);
        for png in images(t) {
            let im = image::load_from_memory(&png).unwrap().to_rgb8();
            assert_eq!(
                im.dimensions(),
                (16, 16),
                "8×8 latents, a VAE that doubles them"
            );
        }
        let pngs = images(t);
        assert_ne!(
            pngs[0], pngs[1],
            "two images of one prompt differ by their seeds"
        );
    }
    assert_ne!(
        images(&tables[0]),
        images(&tables[1]),
        "seeds 0 and 1 differ"
    );

    // A second run computes nothing; a fresh store computes the same bytes.
    let keys = store.keys().unwrap();
    assert_eq!(run_pipeline(&store, &text), vec![]);
    assert_eq!(store.keys().unwrap(), keys);
    let dir2 = tempfile::tempdir().unwrap();
    let store2 = Store::open(dir2.path()).unwrap();
    assert_eq!(run_pipeline(&store2, &text), vec![]);
    let again = sample_tables(&store2);
    let bytes = |ts: &[RecordBatch]| {
        let mut v: Vec<Vec<Vec<u8>>> = ts.iter().map(images).collect();
        v.sort();
        v
    };
    assert_eq!(
        bytes(&again),
        bytes(&tables),
        "byte-identical across stores"
    );

    // Folders that do not fit: the error names the file and what was expected; no samples.
    for (repo, f, names) in [
        ("org/xl", &xl, ["unet/config.json", "SDXL-shaped"]),
        (
            "org/latent8",
            &latent8,
            ["vae/config.json", "latent_channels = 8"],
        ),
        (
            "org/vocab",
            &small_vocab,
            ["tokenizer/vocab.json", "1003 tokens"],
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let failed = run_pipeline(&store, &pipeline(&srv.base, repo, f, params));
        assert!(!failed.is_empty(), "{repo}: sampling must fail");
        for (stage, message) in &failed {
            assert!(stage.starts_with("samples"), "{failed:?}");
            for name in names {
                assert!(message.contains(name), "{repo}: `{name}` not in: {message}");
            }
        }
        assert!(sample_tables(&store).is_empty(), "{repo}: nothing stored");
    }

    // Without a pipeline among its needs, sd-sample says what it needs.
    let no_model = text.replace("needs = [\"sd15\", \"prompts\"]", "needs = [\"prompts\"]");
    let failed = run_pipeline(&store2, &no_model);
    assert!(
        failed
            .iter()
            .all(|(_, m)| m.contains("needs a diffusers pipeline")),
        "{failed:?}"
    );
}
