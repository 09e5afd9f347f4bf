//! `DiffusersFolder::check` on folders built from the committed tiny SD- and SDXL-shaped configs:
//! a whole folder passes; a wrong architecture, a VAE, text encoder or tokenizer that does not
//! fit is refused naming its file; so is another folder's UNet put in place of its own.

use std::path::Path;

use serde_json::{Value, json};
use spo_diffusion::{Architecture, DiffusersFolder, DiffusionError};

fn fixture(name: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/diffusion")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn put(root: &Path, rel: &str, v: &Value) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, v.to_string()).unwrap();
}

fn vocab(n: usize) -> Value {
    Value::Object((0..n).map(|i| (format!("t{i}"), json!(i))).collect())
}

/// A whole folder of `arch`, its text encoders as wide as the UNet expects.
fn folder(arch: Architecture) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    put(
        r,
        "model_index.json",
        &json!({"_class_name": "StableDiffusionPipeline"}),
    );
    put(r, "vae/config.json", &fixture("vae.json"));
    match arch {
        Architecture::Sd15 => {
            let unet = fixture("unet_sd.json");
            let width = unet["cross_attention_dim"].clone();
            put(r, "unet/config.json", &unet);
            put(
                r,
                "text_encoder/config.json",
                &json!({"hidden_size": width, "vocab_size": 50}),
            );
            put(r, "tokenizer/vocab.json", &vocab(50));
        }
        Architecture::Sdxl => {
            let unet = fixture("unet_xl.json");
            let width = unet["cross_attention_dim"].as_u64().unwrap();
            let pooled = unet["projection_class_embeddings_input_dim"]
                .as_u64()
                .unwrap()
                - 6 * unet["addition_time_embed_dim"].as_u64().unwrap();
            put(r, "unet/config.json", &unet);
            put(
                r,
                "text_encoder/config.json",
                &json!({"hidden_size": width / 3, "vocab_size": 50}),
            );
            put(
                r,
                "text_encoder_2/config.json",
                &json!({"hidden_size": width - width / 3, "projection_dim": pooled, "vocab_size": 50}),
            );
            put(r, "tokenizer/vocab.json", &vocab(50));
            put(r, "tokenizer_2/vocab.json", &vocab(50));
        }
    }
    dir
}

/// The file named by `check(arch)`'s error.
fn refused(root: &Path, arch: Architecture) -> (String, String) {
    match DiffusersFolder::open(root).unwrap().check(arch) {
        Err(DiffusionError::Incompatible { path, message }) => (
            path.strip_prefix(root).unwrap().display().to_string(),
            message,
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn whole_folders_pass_and_each_misfit_is_named() {
    for arch in [Architecture::Sd15, Architecture::Sdxl] {
        let dir = folder(arch);
        DiffusersFolder::open(dir.path())
            .unwrap()
            .check(arch)
            .unwrap();
    }

    let sd = folder(Architecture::Sd15);
    let (file, msg) = refused(sd.path(), Architecture::Sdxl);
    assert_eq!(file, "unet/config.json");
    assert!(
        msg.contains("SD-1.5-shaped UNet") && msg.contains("takes SDXL"),
        "{msg}"
    );
    let xl = folder(Architecture::Sdxl);
    let (file, msg) = refused(xl.path(), Architecture::Sd15);
    assert_eq!(file, "unet/config.json");
    assert!(msg.contains("SDXL-shaped UNet"), "{msg}");

    let mut vae = fixture("vae.json");
    vae["latent_channels"] = json!(16);
    put(sd.path(), "vae/config.json", &vae);
    let (file, msg) = refused(sd.path(), Architecture::Sd15);
    assert_eq!(file, "vae/config.json");
    assert!(msg.contains("latent_channels = 16"), "{msg}");
    put(sd.path(), "vae/config.json", &fixture("vae.json"));

    put(sd.path(), "tokenizer/vocab.json", &vocab(49));
    let (file, msg) = refused(sd.path(), Architecture::Sd15);
    assert_eq!(file, "tokenizer/vocab.json");
    assert!(
        msg.contains("49 tokens") && msg.contains("vocab_size = 50"),
        "{msg}"
    );
    put(sd.path(), "tokenizer/vocab.json", &vocab(50));

    put(
        sd.path(),
        "text_encoder/config.json",
        &json!({"hidden_size": 1024, "vocab_size": 50}),
    );
    let (file, msg) = refused(sd.path(), Architecture::Sd15);
    assert_eq!(file, "text_encoder/config.json");
    assert!(msg.contains("1024 features"), "{msg}");

    let mut te2: Value = serde_json::from_str(
        &std::fs::read_to_string(xl.path().join("text_encoder_2/config.json")).unwrap(),
    )
    .unwrap();
    te2["projection_dim"] = json!(7);
    put(xl.path(), "text_encoder_2/config.json", &te2);
    let (file, msg) = refused(xl.path(), Architecture::Sdxl);
    assert_eq!(file, "text_encoder_2/config.json");
    assert!(msg.contains("projection_dim = 7"), "{msg}");
}

/// Another folder's UNet in place of the pipeline's (a released full fine-tune): its config
/// is read and checked against the pipeline's parts, and a misfit names its file, not the part
/// it disagrees with.
#[test]
fn a_replacing_unet_is_read_and_checked_and_its_misfit_named() {
    let sd = folder(Architecture::Sd15);
    let released = tempfile::tempdir().unwrap();
    let mut unet = fixture("unet_sd.json");
    put(released.path(), "unet/config.json", &unet);
    let replaced = || {
        DiffusersFolder::open(sd.path())
            .unwrap()
            .with_unet(&released.path().join("unet"))
    };
    replaced().check(Architecture::Sd15).unwrap();
    assert_eq!(
        replaced().component_dir("unet"),
        released.path().join("unet")
    );
    assert_eq!(replaced().component_dir("vae"), sd.path().join("vae"));

    unet["cross_attention_dim"] = json!(unet["cross_attention_dim"].as_u64().unwrap() * 2);
    put(released.path(), "unet/config.json", &unet);
    assert_eq!(
        replaced().unet_config().unwrap().cross_attention_dim,
        unet["cross_attention_dim"].as_u64().unwrap() as usize
    );
    match replaced().check(Architecture::Sd15) {
        Err(DiffusionError::Incompatible { path, message }) => {
            assert_eq!(path, released.path().join("unet/config.json"));
            assert!(message.contains("cross_attention_dim"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // the pipeline's own UNet is untouched
    DiffusersFolder::open(sd.path())
        .unwrap()
        .check(Architecture::Sd15)
        .unwrap();
}
