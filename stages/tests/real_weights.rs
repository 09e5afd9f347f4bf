//! The real-weights path on a CPU: tiny random-weight SD-1.5- and SDXL-shaped diffusers pipelines
//! (tests/fixtures/sd/sd15_tiny and sdxl_tiny, in the real layouts) served by a loopback server laid out like
//! the Hugging Face hub, fetched by a `hub` stage, sampled by `sd-sample` for the prompts of a
//! `prompts` stage, scored by `sd-score`; trained by `sd-spo` with the tiny released-layout SPM;
//! and what `sd-sample` says about folders that do not fit.
//!
//! HF_ENDPOINT is process-wide: one loopback hub serves every test of this binary, set up once.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use arrow_array::{BinaryArray, Int64Array, RecordBatch};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sha2::{Digest, Sha256};
use spo_core::{Pipeline, Plan, Registry, RunOptions, Store, run::run};

const REV: &str = "0123456789abcdef0123456789abcdef01234567";
const PROMPTS: &[u8] = b"a photo of a cat\nan astronaut riding a horse\na red cube on a table\n";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// The tiny scorers (tests/fixtures/clip/models): repo, folder, `sd-score` params.
const SCORERS: [(&str, &str, &str); 3] = [
    ("org/pickscore", "pickscore_tiny", "metric = \"pickscore\""),
    (
        "org/hps",
        "hps_tiny",
        "metric = \"hpsv2\", file = \"hps_tiny.pt\"",
    ),
    (
        "org/imagereward",
        "imagereward_tiny",
        "metric = \"imagereward\"",
    ),
];

/// A folder's files: path → bytes, in path order.
fn repo_files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let rel = e
                .path()
                .strip_prefix(root)
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
        Box::new(spo_stages::sd_score::SdScore),
        Box::new(spo_stages::sd_spo::SdSpo),
        Box::new(spo_stages::sd_spo::SdxlSpo),
        Box::new(spo_stages::sd_spo::SdGradSpo),
        Box::new(spo_stages::d3po::D3po),
        Box::new(spo_stages::world::WorldKind),
        Box::new(spo_stages::diffusion_dpo::DiffusionDpo),
        Box::new(spo_stages::diffusion_dpo::MapoTrain),
        Box::new(spo_stages::ddpo::Ddpo),
    ])
}

/// A pipeline: `repo` at REV with `files` through `hub`, the served prompt file, and
/// `sd-sample` with `params`.
fn pipeline(base: &str, repo: &str, files: &BTreeMap<String, Vec<u8>>, params: &str) -> String {
    format!(
        r#"[pipeline]
seeds = [0, 1]

{}
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
        hub_stage("sd15", repo, files),
        sha(PROMPTS),
    )
}

/// [`pipeline`] of the tiny SD-1.5 repo with one seed.
fn one_seed_sd15(base: &str, params: &str) -> String {
    pipeline(base, "org/sd15", &repo("org/sd15"), params).replace("seeds = [0, 1]", "seeds = [0]")
}

/// A `hub` stage named `name` fetching `files` of `repo` at REV.
fn hub_stage(name: &str, repo: &str, files: &BTreeMap<String, Vec<u8>>) -> String {
    let quoted = |v: Vec<String>| {
        v.iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "[stage.{name}]\nkind = \"hub\"\nparams = {{ repo = \"{repo}\", revision = \"{REV}\", files = [{}], sha256 = [{}] }}\n",
        quoted(files.keys().cloned().collect()),
        quoted(files.values().map(|b| sha(b)).collect()),
    )
}

/// The scorers' hub stages and an `sd-score` stage for each.
fn scorer_stages() -> String {
    let mut text = String::new();
    for (repo, folder, params) in SCORERS {
        let files = repo_files(&fixtures().join("clip/models").join(folder));
        let name = folder.trim_end_matches("_tiny");
        text += &hub_stage(&format!("{name}-weights"), repo, &files);
        text += &format!(
            "[stage.{name}]\nkind = \"sd-score\"\nneeds = [\"samples\", \"{name}-weights\"]\nparams = {{ {params} }}\n"
        );
    }
    text
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

/// The committed cells whose manifest has metric `metric`, with their manifests.
fn cells_with(store: &Store, metric: &str) -> Vec<(PathBuf, spo_core::Manifest)> {
    store
        .keys()
        .unwrap()
        .into_iter()
        .map(|k| store.cell_dir(&k))
        .filter_map(|c| {
            let m = spo_core::Manifest::read(&c).unwrap();
            m.metrics.contains_key(metric).then_some((c, m))
        })
        .collect()
}

/// Runs `text` — two training stages, each feeding an `sd-sample` beside the base's — in two
/// fresh stores and checks: a LoRA from each method, three different sets of samples (each LoRA
/// changes the images), the same LoRA bytes in the second store. Returns the second store.
fn two_methods_train_reproducibly(text: &str) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(run_pipeline(&store, text), vec![]);
    let first = loras(&store);
    assert_eq!(first.len(), 2, "a LoRA from each method");
    let mut sets: Vec<Vec<Vec<u8>>> = sample_tables(&store).iter().map(images).collect();
    assert_eq!(sets.len(), 3, "the base's samples and each method's");
    sets.sort();
    sets.dedup();
    assert_eq!(sets.len(), 3, "each LoRA changes the images");
    let dir2 = tempfile::tempdir().unwrap();
    let store2 = Store::open(dir2.path()).unwrap();
    assert_eq!(run_pipeline(&store2, text), vec![]);
    assert_eq!(loras(&store2), first, "byte-identical in another store");
    (dir2, store2)
}

/// The bytes of every committed `lora.safetensors`, sorted.
fn loras(store: &Store) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = store
        .keys()
        .unwrap()
        .into_iter()
        .map(|k| store.cell_dir(&k).join("lora.safetensors"))
        .filter(|f| f.is_file())
        .map(|f| std::fs::read(f).unwrap())
        .collect();
    out.sort();
    out
}

/// The `score` column of every committed cell whose manifest has metric `metric`.
fn score_tables(store: &Store, metric: &str) -> Vec<Vec<f64>> {
    let mut out = Vec::new();
    for (cell, m) in cells_with(store, metric) {
        let file = std::fs::File::open(cell.join("scores.parquet")).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        let mut scores = Vec::new();
        for batch in reader {
            let batch = batch.unwrap();
            let col = batch.column_by_name("score").unwrap();
            let col = col
                .as_any()
                .downcast_ref::<arrow_array::Float64Array>()
                .unwrap();
            scores.extend(col.values().iter().copied());
        }
        let mean = scores.iter().sum::<f64>() / scores.len() as f64;
        assert!(
            (m.metrics[metric] - mean).abs() < 1e-9,
            "the metric is the mean"
        );
        out.push(scores);
    }
    out
}

fn images(batch: &RecordBatch) -> Vec<Vec<u8>> {
    let col = batch.column_by_name("image").unwrap();
    let col = col.as_any().downcast_ref::<BinaryArray>().unwrap();
    col.iter().map(|b| b.unwrap().to_vec()).collect()
}

/// A repo of `files` with one file's text changed.
fn edited(
    files: &BTreeMap<String, Vec<u8>>,
    path: &str,
    from: &str,
    to: &str,
) -> BTreeMap<String, Vec<u8>> {
    let mut f = files.clone();
    let text = String::from_utf8(f[path].clone()).unwrap();
    assert!(text.contains(from), "{path} has no `{from}`");
    f.insert(path.into(), text.replacen(from, to, 1).into_bytes());
    f
}

/// The tiny PickScore with a NaN `logit_scale`: weights that score every image NaN.
fn pickscore_with_nan_scale() -> BTreeMap<String, Vec<u8>> {
    let mut files = repo_files(&fixtures().join("clip/models/pickscore_tiny"));
    let dev = candle_core::Device::Cpu;
    let path = fixtures().join("clip/models/pickscore_tiny/model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &dev).unwrap();
    let scale = &tensors["logit_scale"];
    let nan = candle_core::Tensor::full(f32::NAN, scale.shape(), &dev)
        .unwrap()
        .to_dtype(scale.dtype())
        .unwrap();
    tensors.insert("logit_scale".into(), nan);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model.safetensors");
    candle_core::safetensors::save(&tensors, &out).unwrap();
    files.insert("model.safetensors".into(), std::fs::read(out).unwrap());
    files
}

/// The repos every test here fetches, by name.
fn repos() -> Vec<(&'static str, BTreeMap<String, Vec<u8>>)> {
    let files = repo_files(&fixtures().join("sd/sd15_tiny"));
    // Variants that do not fit an SD-1.5 stage, one file changed in each.
    let xl = edited(
        &files,
        "unet/config.json",
        "\"addition_embed_type\": null",
        "\"addition_embed_type\": \"text_time\"",
    );
    let latent8 = edited(
        &files,
        "vae/config.json",
        "\"latent_channels\": 4",
        "\"latent_channels\": 8",
    );
    let vocab = edited(
        &files,
        "tokenizer/vocab.json",
        "\"<|endoftext|>\": 1001",
        "\"<|endoftext|>\": 1001, \"extra\": 1002",
    );
    let spm = BTreeMap::from([(
        "spm_tiny.bin".to_owned(),
        std::fs::read(fixtures().join("clip/models/spm_tiny.bin")).unwrap(),
    )]);
    // A LoRA as diffusers' save_lora_weights names it (the SPO authors' released LoRAs).
    let released = BTreeMap::from([(
        "pytorch_lora_weights.safetensors".to_owned(),
        std::fs::read(fixtures().join("sd/sd15_tiny_spo_lora.safetensors")).unwrap(),
    )]);
    // A released full fine-tune, as Diffusion-DPO's and MaPO's repos hold one: `unet/` only,
    // here the tiny UNet's weights scaled by 1.05; and one whose config does not fit SD-1.5's
    // text encoder.
    let unet_dir = fixtures().join("sd/sd15_tiny/unet");
    let weights = "unet/diffusion_pytorch_model.safetensors";
    let scaled: HashMap<String, candle_core::Tensor> = candle_core::safetensors::load(
        unet_dir.join("diffusion_pytorch_model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap()
    .into_iter()
    .map(|(k, t)| (k, (t * 1.05).unwrap()))
    .collect();
    let saved = tempfile::NamedTempFile::new().unwrap();
    candle_core::safetensors::save(&scaled, saved.path()).unwrap();
    let unet_only = BTreeMap::from([
        (
            "unet/config.json".to_owned(),
            files["unet/config.json"].clone(),
        ),
        (weights.to_owned(), std::fs::read(saved.path()).unwrap()),
    ]);
    let unet_misfit = edited(
        &unet_only,
        "unet/config.json",
        "\"cross_attention_dim\": 16",
        "\"cross_attention_dim\": 24",
    );
    let mut out = vec![
        ("org/dpo-unet", unet_only),
        ("org/unet-misfit", unet_misfit),
        ("org/sd15", files),
        ("org/xl", xl),
        ("org/latent8", latent8),
        ("org/vocab", vocab),
        ("org/spm", spm),
        ("org/sdxl", repo_files(&fixtures().join("sd/sdxl_tiny"))),
        ("org/released-lora", released),
        ("org/pickscore-nan", pickscore_with_nan_scale()),
    ];
    for (repo, folder, _) in SCORERS {
        out.push((
            repo,
            repo_files(&fixtures().join("clip/models").join(folder)),
        ));
    }
    out
}

/// The loopback hub, started once for the whole binary, HF_ENDPOINT pointing at it.
fn hub() -> &'static str {
    static BASE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BASE.get_or_init(|| {
        let mut served: HashMap<String, Vec<u8>> =
            HashMap::from([("/prompts.txt".into(), PROMPTS.to_vec())]);
        for (repo, files) in repos() {
            for (path, bytes) in files {
                served.insert(format!("/{repo}/resolve/{REV}/{path}"), bytes);
            }
        }
        let srv = support::http::serve(served, None, 10_000);
        // SAFETY: set once, inside this initialiser, before any pipeline of this binary runs
        // (every test reaches the hub through here first); nothing else writes the environment.
        unsafe {
            std::env::set_var("HF_ENDPOINT", &srv.base);
            std::env::remove_var("HF_TOKEN");
        }
        srv.base
    })
}

fn repo(name: &str) -> BTreeMap<String, Vec<u8>> {
    repos()
        .into_iter()
        .find(|(r, _)| *r == name)
        .map(|(_, f)| f)
        .unwrap()
}

#[test]
fn a_hub_served_sd15_pipeline_samples_reproducibly_and_misfits_are_named() {
    let base = hub();
    let files = repo("org/sd15");
    let params = "steps = 3, per_prompt = 2, batch = 4";
    let text = pipeline(base, "org/sd15", &files, params) + &scorer_stages();
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

    // Each scorer's cells hold what the scorer itself gives those images and prompts.
    for (_, folder, params) in SCORERS {
        let metric = params.split('"').nth(1).unwrap();
        let dir = fixtures().join("clip/models").join(folder);
        let weights = if metric == "hpsv2" {
            dir.join("hps_tiny.pt")
        } else {
            dir
        };
        let scorer = spo_clip::Scorer::load(
            metric.parse().unwrap(),
            &weights,
            &spo_clip::ScoreOptions::default(),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let mut want: Vec<Vec<f64>> = tables
            .iter()
            .map(|t| {
                let ims: Vec<_> = images(t)
                    .iter()
                    .map(|p| image::load_from_memory(p).unwrap().to_rgb8())
                    .collect();
                let prompts = t.column_by_name("prompt").unwrap();
                let prompts = prompts
                    .as_any()
                    .downcast_ref::<arrow_array::StringArray>()
                    .unwrap();
                let prompts: Vec<&str> = prompts.iter().map(Option::unwrap).collect();
                scorer.score(&ims, &prompts).unwrap()
            })
            .collect();
        let mut got: Vec<Vec<f64>> = score_tables(&store, metric);
        want.sort_by(|a, b| a.partial_cmp(b).unwrap());
        got.sort_by(|a, b| a.partial_cmp(b).unwrap());
        assert_eq!(got.len(), 2, "{metric}: one cell per seed");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.len(), 6);
            for (a, b) in g.iter().zip(w) {
                assert!(
                    (a - b).abs() <= 1e-9 * b.abs().max(1.0),
                    "{metric}: {g:?} vs {w:?}"
                );
            }
        }
    }

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
    for (repo, names) in [
        ("org/xl", ["unet/config.json", "SDXL-shaped"]),
        ("org/latent8", ["vae/config.json", "latent_channels = 8"]),
        ("org/vocab", ["tokenizer/vocab.json", "1003 tokens"]),
    ] {
        let f = &self::repo(repo);
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let failed = run_pipeline(&store, &pipeline(base, repo, f, params));
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

/// Latent SPO end to end: `sd-spo` trains a LoRA on the hub-served pipeline with the tiny SPM
/// (the released layout, its parent's config from the PickScore repo); `sd-sample` with that
/// LoRA draws other images than the base from the same seeds; the LoRA's bytes are the same in
/// another store.
#[test]
fn sd_spo_trains_a_lora_that_sd_sample_uses() {
    let base = hub();
    let files = repo("org/sd15");
    let spo = hub_stage("spm-weights", "org/spm", &repo("org/spm"))
        + &hub_stage("pickscore-weights", "org/pickscore", &repo("org/pickscore"))
        + "[stage.spo]\nkind = \"sd-spo\"\nneeds = [\"sd15\", \"prompts\", \"spm-weights\", \"pickscore-weights\"]\n"
        + "params = { spm_file = \"spm_tiny.bin\", k = 2, steps = 4, rounds = 2, prompts = 2, train_batch = 2, lr = 1e-3, checkpoint_every = 1, snapshots = 0 }\n"
        + "[stage.samples-spo]\nkind = \"sd-sample\"\nneeds = [\"sd15\", \"prompts\", \"spo\"]\nparams = { steps = 3, per_prompt = 2 }\n";
    let text = pipeline(base, "org/sd15", &files, "steps = 3, per_prompt = 2") + &spo;
    let text = text.replace("seeds = [0, 1]", "seeds = [0]");
    let lora_of = |store: &Store| -> Vec<u8> {
        let key = store
            .keys()
            .unwrap()
            .into_iter()
            .find(|k| store.cell_dir(k).join("rounds.parquet").is_file())
            .expect("an sd-spo cell");
        let cell = store.cell_dir(&key);
        let m = spo_core::Manifest::read(&cell).unwrap();
        assert!(
            m.metrics["pairs"] > 0.0,
            "the SPM passed no pair: {:?}",
            m.metrics
        );
        assert!(
            m.metrics["ratio_deviation"] > 0.0,
            "the policy did not move"
        );
        std::fs::read(cell.join("lora.safetensors")).unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(run_pipeline(&store, &text), vec![]);
    let lora = lora_of(&store);
    let tables = sample_tables(&store);
    assert_eq!(tables.len(), 2, "the base's samples and the LoRA's");
    let (a, b) = (images(&tables[0]), images(&tables[1]));
    assert_eq!(a.len(), b.len());
    assert_ne!(
        a, b,
        "the LoRA changes the images drawn from the same seeds"
    );

    let dir2 = tempfile::tempdir().unwrap();
    let store2 = Store::open(dir2.path()).unwrap();
    assert_eq!(run_pipeline(&store2, &text), vec![]);
    assert_eq!(lora_of(&store2), lora, "byte-identical in another store");

    // MSPO (j = 2 steps per pool) on the SDXL-shaped repo, through `sdxl-spo` (sd-spo with the
    // SDXL run's defaults), which refuses the SD-1.5 repo.
    let as_xl = |t: &str| t.replace("kind = \"sd-spo\"", "kind = \"sdxl-spo\"");
    let failed = run_pipeline(&store2, &as_xl(&text));
    assert!(
        failed
            .iter()
            .any(|(_, m)| m.contains("needs an SDXL pipeline") && m.contains("text_encoder_2")),
        "{failed:?}"
    );
    let xl = as_xl(&text)
        .replace(
            &hub_stage("sd15", "org/sd15", &files),
            &hub_stage("sd15", "org/sdxl", &repo("org/sdxl")),
        )
        .replace(
            "k = 2, steps = 4",
            "k = 2, j = 2, threshold = 0.0, steps = 4",
        );
    assert!(xl.contains("org/sdxl") && xl.contains("j = 2") && xl.contains("sdxl-spo"));
    let dir3 = tempfile::tempdir().unwrap();
    let store3 = Store::open(dir3.path()).unwrap();
    assert_eq!(run_pipeline(&store3, &xl), vec![]);
    assert_ne!(lora_of(&store3), lora, "another base, another LoRA");

    // Without the SPM's checkpoint among its needs, sd-spo says what it needs.
    let no_spm = text.replace("\"spm-weights\", ", "");
    let failed = run_pipeline(&store2, &no_spm);
    assert!(
        failed
            .iter()
            .any(|(_, m)| m.contains("spm_tiny.bin") && m.contains("spm_file")),
        "{failed:?}"
    );
}

/// An SDXL-shaped repo (two text encoders, pooled and size conditioning) through the same
/// stages: `sd-sample` recognises it from model_index.json and samples it reproducibly.
#[test]
fn an_sdxl_pipeline_samples_through_the_same_stage() {
    let base = hub();
    let text = pipeline(
        base,
        "org/sdxl",
        &repo("org/sdxl"),
        "steps = 3, per_prompt = 1",
    )
    .replace("seeds = [0, 1]", "seeds = [0]");
    let runs: Vec<Vec<Vec<u8>>> = (0..2)
        .map(|_| {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(run_pipeline(&store, &text), vec![]);
            let tables = sample_tables(&store);
            assert_eq!(tables.len(), 1);
            images(&tables[0])
        })
        .collect();
    assert_eq!(runs[0].len(), 3);
    for png in &runs[0] {
        let im = image::load_from_memory(png).unwrap().to_rgb8();
        assert_eq!(im.dimensions(), (16, 16));
    }
    assert_eq!(runs[0], runs[1], "byte-identical in another store");
}

/// D3PO and DDPO on real weights: the same kinds as in the world, given a pipeline, prompts and
/// PickScore's released folder as the reward; each trains a LoRA that `sd-sample` then uses,
/// byte-identically in another store.
#[test]
fn d3po_and_ddpo_train_on_a_hub_pipeline_with_pickscore_as_reward() {
    let base = hub();
    let files = repo("org/sd15");
    let mut text = pipeline(base, "org/sd15", &files, "steps = 3, per_prompt = 1")
        .replace("seeds = [0, 1]", "seeds = [0]")
        + &hub_stage("pickscore-weights", "org/pickscore", &repo("org/pickscore"));
    for kind in ["d3po", "ddpo"] {
        text += &format!(
            "[stage.{kind}]\nkind = \"{kind}\"\nneeds = [\"sd15\", \"prompts\", \"pickscore-weights\"]\n\
             params = {{ rounds = 2, prompts = 2, steps = 3, train_batch = 4, lr = 1e-3, snapshots = 0 }}\n\
             [stage.samples-{kind}]\nkind = \"sd-sample\"\nneeds = [\"sd15\", \"prompts\", \"{kind}\"]\n\
             params = {{ steps = 3, per_prompt = 1 }}\n"
        );
    }
    let (_dir, store2) = two_methods_train_reproducibly(&text);
    for (_, m) in cells_with(&store2, "reward_first_round") {
        assert!(
            m.metrics["reward_first_round"].is_finite(),
            "{:?}",
            m.metrics
        );
    }

    // Without the reward model among its needs, each says what it needs.
    let no_reward = text.replace(", \"pickscore-weights\"]", "]");
    let failed = run_pipeline(&store2, &no_reward);
    assert!(
        !failed.is_empty()
            && failed
                .iter()
                .all(|(_, m)| m.contains("needs the reward model")),
        "{failed:?}"
    );
}

/// GradSPO on real weights: `sd-gradspo` trains with its moving-average rollout policy and
/// noise targets on the same inputs as `sd-spo`, into another LoRA than SPO's from the same
/// seed; MSPO's j > 1 is refused by name.
#[test]
fn sd_gradspo_trains_another_lora_than_sd_spo_and_refuses_mspo() {
    let base = hub();
    let params = "spm_file = \"spm_tiny.bin\", k = 2, steps = 4, rounds = 2, prompts = 2, train_batch = 2, accumulate = 1, lr = 1e-3, snapshots = 0";
    let mut text = one_seed_sd15(base, "steps = 3")
        + &hub_stage("spm-weights", "org/spm", &repo("org/spm"))
        + &hub_stage("pickscore-weights", "org/pickscore", &repo("org/pickscore"));
    for kind in ["sd-spo", "sd-gradspo"] {
        text += &format!(
            "[stage.{kind}-run]\nkind = \"{kind}\"\nneeds = [\"sd15\", \"prompts\", \"spm-weights\", \"pickscore-weights\"]\nparams = {{ {params} }}\n"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(run_pipeline(&store, &text), vec![]);
    let mut loras = Vec::new();
    for key in store.keys().unwrap() {
        let cell = store.cell_dir(&key);
        if cell.join("rounds.parquet").is_file() {
            let m = spo_core::Manifest::read(&cell).unwrap();
            assert!(
                m.metrics["pairs"] > 0.0 && m.metrics["ratio_deviation"] > 0.0,
                "{:?}",
                m.metrics
            );
            loras.push(std::fs::read(cell.join("lora.safetensors")).unwrap());
        }
    }
    assert_eq!(loras.len(), 2);
    assert_ne!(loras[0], loras[1], "GradSPO's objective is not SPO's");

    let mspo = text.replace(
        &format!("{{ {params} }}\n",),
        &format!("{{ {params}, j = 2 }}\n"),
    );
    let failed = run_pipeline(&store, &mspo);
    assert!(
        failed.iter().any(|(s, m)| s.starts_with("sd-gradspo")
            && m.contains("j = 1")
            && m.contains("j = 2")),
        "{failed:?}"
    );
}

/// Diffusion-DPO and MaPO on real weights: the same kinds, given a pipeline and preference
/// pairs in Pick-a-Pic's schema (here the world's generic pairs, 32×32 renders resized to the
/// pipeline's 16×16 and VAE-encoded); a LoRA each, each changing `sd-sample`'s images,
/// byte-identical in another store; without pairs, an error saying what is needed.
#[test]
fn diffusion_dpo_and_mapo_train_on_a_hub_pipeline_from_pick_a_pic_pairs() {
    let base = hub();
    let mut text = pipeline(
        base,
        "org/sd15",
        &repo("org/sd15"),
        "steps = 3, per_prompt = 1",
    )
    .replace("seeds = [0, 1]", "seeds = [0]")
        + "[stage.pairs]\nkind = \"world\"\nparams = { train_prompts = 8, validation_prompts = 2 }\n";
    for kind in ["diffusion-dpo", "mapo"] {
        text += &format!(
            "[stage.{kind}]\nkind = \"{kind}\"\nneeds = [\"sd15\", \"pairs\"]\n\
             params = {{ steps = 3, batch = 2, warmup = 0, lr = 1e-3, snapshots = 0 }}\n\
             [stage.samples-{kind}]\nkind = \"sd-sample\"\nneeds = [\"sd15\", \"prompts\", \"{kind}\"]\n\
             params = {{ steps = 3, per_prompt = 1 }}\n"
        );
    }
    let (_dir, store2) = two_methods_train_reproducibly(&text);

    let no_pairs = text.replace("needs = [\"sd15\", \"pairs\"]", "needs = [\"sd15\"]");
    let failed = run_pipeline(&store2, &no_pairs);
    assert!(
        !failed.is_empty()
            && failed
                .iter()
                .all(|(_, m)| m.contains("needs preference pairs")),
        "{failed:?}"
    );
}

/// Σ t², in f64.
fn squared_norm(t: &candle_core::Tensor) -> f64 {
    t.sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64
}

/// Gradient checkpointing changes how a method's gradients are had, not what they are: on real
/// weights (f32, one latent per UNet call) D3PO, DDPO, Diffusion-DPO and MaPO each train, with
/// it, the LoRA they train keeping candle's graph — every `lora_B` (zero at the start, so all
/// of it learnt) within 0.1% of the graph's in norm — and record their memory estimate, smaller
/// with it. Diffusion-DPO without its random flips learns something else; clipped to a tiny
/// gradient norm, D3PO and Diffusion-DPO barely move.
#[test]
fn every_method_trains_the_same_lora_with_gradient_checkpointing() {
    let base = hub();
    let mut text = one_seed_sd15(base, "steps = 3")
        + &hub_stage("pickscore-weights", "org/pickscore", &repo("org/pickscore"))
        + "[stage.pairs]\nkind = \"world\"\nparams = { train_prompts = 8, validation_prompts = 2 }\n";
    let methods = [
        (
            "d3po",
            "\"sd15\", \"prompts\", \"pickscore-weights\"",
            "rounds = 2, prompts = 2, steps = 3, train_batch = 4",
        ),
        (
            "ddpo",
            "\"sd15\", \"prompts\", \"pickscore-weights\"",
            "rounds = 2, prompts = 2, steps = 3, train_batch = 4",
        ),
        (
            "diffusion-dpo",
            "\"sd15\", \"pairs\"",
            "steps = 3, batch = 2, warmup = 0",
        ),
        (
            "mapo",
            "\"sd15\", \"pairs\"",
            "steps = 3, batch = 2, warmup = 0",
        ),
    ];
    for (kind, needs, params) in methods {
        for checkpointing in [false, true] {
            text += &format!(
                "[stage.{kind}-{checkpointing}]\nkind = \"{kind}\"\nneeds = [{needs}]\n\
                 params = {{ {params}, lr = 1e-3, snapshots = 0, precision = \"f32\", \
                 gradient_checkpointing = {checkpointing}, micro_batch = 1 }}\n"
            );
        }
    }
    // D3PO and Diffusion-DPO with their gradients clipped to a norm of 1e-9: under AdamW's ε
    // (1e-8) the LoRA barely moves
    for (kind, needs, params) in &methods[..3] {
        if *kind == "ddpo" {
            continue;
        }
        text += &format!(
            "[stage.{kind}-clipped]\nkind = \"{kind}\"\nneeds = [{needs}]\n\
             params = {{ {params}, lr = 1e-3, snapshots = 0, precision = \"f32\", \
             gradient_checkpointing = false, micro_batch = 1, max_grad_norm = 1e-9 }}\n"
        );
    }
    // and Diffusion-DPO without the reference's random flips of the pairs' images
    text += "[stage.unflipped]\nkind = \"diffusion-dpo\"\nneeds = [\"sd15\", \"pairs\"]\n\
             params = { steps = 3, batch = 2, warmup = 0, lr = 1e-3, snapshots = 0, precision = \"f32\", \
             gradient_checkpointing = false, micro_batch = 1, random_flip = false }\n";
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(run_pipeline(&store, &text), vec![]);
    let cells = cells_with(&store, "memory_estimate_gib");
    let trained = |stage: &str| {
        let (cell, m) = cells
            .iter()
            .find(|(_, m)| m.stage == stage)
            .unwrap_or_else(|| panic!("no cell of {stage} with a memory estimate"));
        let lora = candle_core::safetensors::load(
            cell.join("lora.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        (lora, m.metrics["memory_estimate_gib"])
    };
    let b_norm = |lora: &std::collections::HashMap<String, candle_core::Tensor>| {
        lora.iter()
            .filter(|(name, _)| name.contains("lora_B"))
            .map(|(_, t)| squared_norm(t))
            .sum::<f64>()
            .sqrt()
    };
    for kind in ["d3po", "diffusion-dpo"] {
        let (free, clipped) = (
            trained(&format!("{kind}-false")).0,
            trained(&format!("{kind}-clipped")).0,
        );
        let (free, clipped) = (b_norm(&free), b_norm(&clipped));
        assert!(
            free > 0.0 && clipped < 0.05 * free,
            "{kind}: clipped {clipped} vs {free}"
        );
    }
    let (flipped, unflipped) = (trained("diffusion-dpo-false").0, trained("unflipped").0);
    assert!(
        flipped.iter().any(|(name, t)| (t - &unflipped[name])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            > 0.0),
        "random flips change what Diffusion-DPO learns"
    );
    for (kind, _, _) in methods {
        let (graph, graph_need) = trained(&format!("{kind}-false"));
        let (recomputed, recomputed_need) = trained(&format!("{kind}-true"));
        assert!(
            recomputed_need < graph_need,
            "{kind}: {recomputed_need} vs {graph_need} GiB"
        );
        let (mut diff, mut norm, mut b_tensors) = (0f64, 0f64, 0);
        for (name, g) in &graph {
            if !name.contains("lora_B") {
                continue;
            }
            b_tensors += 1;
            diff += squared_norm(&(g - &recomputed[name]).unwrap());
            norm += squared_norm(g);
        }
        assert!(
            b_tensors > 0 && norm > 0.0,
            "{kind}: the LoRA learnt nothing"
        );
        let rel = (diff / norm).sqrt();
        assert!(
            rel < 1e-3,
            "{kind}: checkpointed LoRA differs by {rel:.2e} of its norm"
        );
    }
}

/// Gradient accumulation in the offline methods: a step of 2 micro-batches of 1 pair trains the
/// LoRA a step of one micro-batch of 2 pairs trains (the same pairs, t and noise are drawn for
/// the step either way), for Diffusion-DPO and MaPO, within 1e-3 of its norm — and another LoRA
/// than a step of half the pairs.
#[test]
fn accumulated_micro_batches_train_as_one_larger_batch() {
    let base = hub();
    let mut text = one_seed_sd15(base, "steps = 3")
        + "[stage.pairs]\nkind = \"world\"\nparams = { train_prompts = 8, validation_prompts = 2 }\n";
    for kind in ["diffusion-dpo", "mapo"] {
        for (name, batch, accumulate) in [("whole", 2, 1), ("accumulated", 1, 2), ("half", 1, 1)] {
            text += &format!(
                "[stage.{kind}-{name}]\nkind = \"{kind}\"\nneeds = [\"sd15\", \"pairs\"]\n\
                 params = {{ steps = 3, batch = {batch}, accumulate = {accumulate}, warmup = 0, \
                 lr = 1e-3, snapshots = 0, precision = \"f32\", gradient_checkpointing = false }}\n"
            );
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(run_pipeline(&store, &text), vec![]);
    let lora = |stage: &str| {
        let (cell, _) = cells_with(&store, "memory_estimate_gib")
            .into_iter()
            .find(|(_, m)| m.stage == stage)
            .unwrap_or_else(|| panic!("no cell of {stage}"));
        candle_core::safetensors::load(cell.join("lora.safetensors"), &candle_core::Device::Cpu)
            .unwrap()
    };
    for kind in ["diffusion-dpo", "mapo"] {
        let whole = lora(&format!("{kind}-whole"));
        let relative = |other: &std::collections::HashMap<String, candle_core::Tensor>| {
            let (mut diff, mut norm) = (0.0, 0.0);
            for (name, t) in whole.iter().filter(|(n, _)| n.contains("lora_B")) {
                diff += squared_norm(&(t - &other[name]).unwrap());
                norm += squared_norm(t);
            }
            assert!(norm > 0.0, "{kind}: the LoRA learnt nothing");
            (diff / norm).sqrt()
        };
        let accumulated = relative(&lora(&format!("{kind}-accumulated")));
        assert!(
            accumulated < 1e-3,
            "{kind}: accumulated differs by {accumulated:.2e}"
        );
        let half = relative(&lora(&format!("{kind}-half")));
        assert!(
            half > 0.05,
            "{kind}: half the pairs trains nearly the same LoRA ({half:.2e})"
        );
    }
}

/// A released full fine-tune (a repo of `unet/` only, as Diffusion-DPO's and MaPO's are)
/// sampled in place of the pipeline's UNet: other images than the base's, the same in another
/// store; a UNet that does not fit the pipeline is named by its file before any weight is read
/// and nothing is stored; two UNets are ambiguous.
#[test]
fn a_released_unet_replaces_the_pipelines_and_a_misfit_is_named() {
    let base = hub();
    let sample = |unets: &str| {
        format!(
            "[stage.samples-released]\nkind = \"sd-sample\"\nneeds = [\"sd15\", \"prompts\", {unets}]\n\
             params = {{ steps = 3, per_prompt = 1 }}\n"
        )
    };
    let text = one_seed_sd15(base, "steps = 3, per_prompt = 1")
        + &hub_stage("dpo-unet", "org/dpo-unet", &repo("org/dpo-unet"))
        + &hub_stage("misfit", "org/unet-misfit", &repo("org/unet-misfit"));
    let runs: Vec<Vec<Vec<Vec<u8>>>> = (0..2)
        .map(|_| {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(
                run_pipeline(&store, &(text.clone() + &sample("\"dpo-unet\""))),
                vec![]
            );
            let mut sets: Vec<Vec<Vec<u8>>> = sample_tables(&store).iter().map(images).collect();
            sets.sort();
            sets
        })
        .collect();
    assert_eq!(
        runs[0].len(),
        2,
        "the base's samples and the released UNet's"
    );
    assert_ne!(
        runs[0][0], runs[0][1],
        "the released UNet draws other images"
    );
    assert_eq!(runs[0], runs[1], "byte-identical in another store");

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let failed = run_pipeline(&store, &(text.clone() + &sample("\"misfit\"")));
    assert!(
        failed.iter().any(|(s, m)| s.starts_with("samples-released")
            && m.contains("unet/config.json")
            && m.contains("cross_attention_dim")),
        "{failed:?}"
    );
    assert_eq!(
        sample_tables(&store).len(),
        1,
        "only the base's samples are stored"
    );
    let failed = run_pipeline(&store, &(text + &sample("\"dpo-unet\", \"misfit\"")));
    assert!(
        failed
            .iter()
            .any(|(s, m)| s.starts_with("samples-released") && m.contains("ambiguous")),
        "{failed:?}"
    );
}

/// A released LoRA (diffusers' `pytorch_lora_weights.safetensors`, fetched by `hub`) evaluated
/// without training: `sd-sample` samples with it, and the scores follow; with two LoRAs among
/// its needs it refuses to guess.
#[test]
fn a_released_lora_from_the_hub_is_sampled_and_scored_without_training() {
    let base = hub();
    let text = one_seed_sd15(base, "steps = 3, per_prompt = 1")
        + &hub_stage("released", "org/released-lora", &repo("org/released-lora"))
        + "[stage.samples-released]\nkind = \"sd-sample\"\nneeds = [\"sd15\", \"prompts\", \"released\"]\nparams = { steps = 3, per_prompt = 1 }\n"
        + &hub_stage("pickscore-weights", "org/pickscore", &repo("org/pickscore"))
        + "[stage.pickscore]\nkind = \"sd-score\"\nneeds = [\"samples-released\", \"pickscore-weights\"]\nparams = { metric = \"pickscore\" }\n";
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(run_pipeline(&store, &text), vec![]);
    let tables = sample_tables(&store);
    assert_eq!(tables.len(), 2);
    assert_ne!(
        images(&tables[0]),
        images(&tables[1]),
        "the LoRA changes the images"
    );
    assert_eq!(score_tables(&store, "pickscore").len(), 1);

    let two = (text.clone()
        + &hub_stage(
            "released-2",
            "org/released-lora",
            &repo("org/released-lora"),
        ))
        .replace(
            "needs = [\"sd15\", \"prompts\", \"released\"]",
            "needs = [\"sd15\", \"prompts\", \"released\", \"released-2\"]",
        );
    let failed = run_pipeline(&store, &two);
    assert!(
        failed
            .iter()
            .any(|(_, m)| m.contains("ambiguous") && m.contains("hold a LoRA")),
        "{failed:?}"
    );
    // Two pipelines among its needs are refused the same way.
    let two_models = (text.clone() + &hub_stage("sd15-again", "org/sdxl", &repo("org/sdxl")))
        .replace(
            "needs = [\"sd15\", \"prompts\", \"released\"]",
            "needs = [\"sd15\", \"prompts\", \"released\", \"sd15-again\"]",
        );
    let failed = run_pipeline(&store, &two_models);
    assert!(
        failed
            .iter()
            .any(|(_, m)| m.contains("ambiguous") && m.contains("are diffusers pipelines")),
        "{failed:?}"
    );
}

/// `sd-score`'s bad inputs: weights that score NaN, two weights inputs for one scorer, the
/// aesthetic predictor without its head — each an error saying what is wrong, nothing stored.
#[test]
fn sd_score_names_broken_weights_and_misplaced_inputs() {
    let base = hub();
    let sample = pipeline(
        base,
        "org/sd15",
        &repo("org/sd15"),
        "steps = 2, prompts = 1",
    )
    .replace("seeds = [0, 1]", "seeds = [0]")
        + &hub_stage(
            "nan-weights",
            "org/pickscore-nan",
            &repo("org/pickscore-nan"),
        )
        + &hub_stage("pickscore-weights", "org/pickscore", &repo("org/pickscore"));
    let score = |needs: &str, params: &str| {
        format!("[stage.score]\nkind = \"sd-score\"\nneeds = [{needs}]\nparams = {{ {params} }}\n")
    };
    for (stage, expected) in [
        (
            score("\"samples\", \"nan-weights\"", "metric = \"pickscore\""),
            "is NaN (not finite)",
        ),
        (
            score(
                "\"samples\", \"nan-weights\", \"pickscore-weights\"",
                "metric = \"pickscore\"",
            ),
            "from one input besides the samples; got 2",
        ),
        (
            score(
                "\"samples\", \"pickscore-weights\"",
                "metric = \"aesthetic\"",
            ),
            "no aesthetic head among the needs",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let failed = run_pipeline(&store, &(sample.clone() + &stage));
        assert!(
            failed.len() == 1 && failed[0].0.starts_with("score") && failed[0].1.contains(expected),
            "{expected}: {failed:?}"
        );
        assert!(
            cells_with(&store, "pickscore").is_empty(),
            "nothing scored is stored"
        );
    }
}
