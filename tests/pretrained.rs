//! The pretrained in-world weights compiled into spo-pipe: the default pipeline's `text-encoder`,
//! `base` and `base-xl` write exactly the committed bytes, each base the one whose recipe its
//! params are, and refuse (naming why) wherever they would not have trained them: other params,
//! another world, another text encoder.

use std::path::Path;
use std::process::Output;

mod support;

fn spo_pipe(store: &Path, args: &[&str]) -> Output {
    support::default_pipeline(store, &[], args)
        .output()
        .expect("spawn spo-pipe")
}

/// The sha256 a committed manifest (JSON) records for `rel`.
fn digest_in(manifest: &serde_json::Value, rel: &str) -> String {
    manifest["files"]
        .as_array()
        .and_then(|fs| fs.iter().find(|f| f["path"] == rel))
        .and_then(|f| f["sha256"].as_str())
        .unwrap_or_else(|| panic!("no `{rel}` in {manifest}"))
        .to_owned()
}

fn embedded_manifest(model: &str) -> serde_json::Value {
    let path = format!(
        "{}/stages/assets/pretrained/{model}/manifest.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

fn shown(store: &Path, stage: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["show", stage, "--json"];
    args.extend_from_slice(extra);
    let out = spo_pipe(store, &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_default_pipeline_starts_from_the_embedded_bytes_and_refuses_anything_else() {
    let dir = tempfile::tempdir().unwrap();
    let out = spo_pipe(dir.path(), &["run", "base", "base-xl"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let base = shown(dir.path(), "base", &[]);
    let xl = shown(dir.path(), "base-xl", &[]);
    let text = shown(dir.path(), "text-encoder", &[]);
    for (cell, model, file) in [
        (&base, "base", "unet.safetensors"),
        (&base, "base", "unet_config.json"),
        (&xl, "base-xl", "unet.safetensors"),
        (&xl, "base-xl", "unet_config.json"),
        (&text, "text-encoder", "clip.safetensors"),
        (&text, "text-encoder", "vocab.json"),
    ] {
        assert_eq!(
            digest_in(cell, file),
            digest_in(&embedded_manifest(model), file),
            "{model}/{file}"
        );
    }

    assert_ne!(
        digest_in(&base, "unet.safetensors"),
        digest_in(&xl, "unet.safetensors")
    );

    let refused = |set: &[&str], needle: &str| {
        let mut args = vec!["run", "base", "base-xl"];
        for s in set {
            args.extend_from_slice(&["--set", s]);
        }
        let out = spo_pipe(dir.path(), &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{set:?}: {err}");
        assert!(
            err.contains("weights = \"embedded\"") && err.contains(needle),
            "{set:?} should name {needle}: {err}"
        );
    };
    refused(
        &["base.steps=4999"],
        "`base-train` trained with other params: steps = 5000",
    );
    // as far from both recipes: both named
    refused(
        &["base-xl.channels=[24, 48, 40]"],
        "`base-train` trained with other params: channels = [16, 32, 32], and the weights of `base-xl-train` trained with other params: channels = [24, 48, 48]",
    );
    refused(
        &["base-xl.steps=4000", "base-xl.warmup=100"],
        "`base-xl-train` trained with other params: steps = 5000, warmup = 200;",
    );
    refused(
        &["text-encoder.weights=\"train\"", "text-encoder.steps=2"],
        "another text encoder",
    );
    refused(&["world.objects=7"], "another world");
}
