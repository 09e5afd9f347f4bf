//! `spo-pipe score` on bad and unusual inputs: WebP images, truncated JPEGs, weights holding a
//! NaN, a Parquet with a null prompt. Uses the tiny random-weight PickScore of the spo-clip
//! fixtures.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Float64Type;
use arrow_array::{ArrayRef, BinaryArray, RecordBatch, StringArray};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip")
}

fn astronaut() -> image::DynamicImage {
    image::open(fixtures().join("images/astronaut_crop.png")).unwrap()
}

fn encode(im: &image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    im.to_rgb8().write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// Scores `images` (a folder or a Parquet) with pickscore; `prompts` is a prompts file.
fn score(images: &Path, weights: &Path, prompts: Option<&Path>, out: &Path) -> Output {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_spo-pipe"));
    c.env_remove("RUST_LOG")
        .args(["score", "--metric", "pickscore", "--weights"])
        .arg(weights)
        .arg("--images")
        .arg(images)
        .arg("--out")
        .arg(out);
    if let Some(p) = prompts {
        c.arg("--prompts").arg(p);
    }
    c.output().unwrap()
}

fn weights() -> PathBuf {
    fixtures().join("models/pickscore_tiny")
}

fn scores(out: &Path) -> Vec<f64> {
    let file = std::fs::File::open(out).unwrap();
    let batch = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    batch
        .column_by_name("pickscore")
        .unwrap()
        .as_primitive::<Float64Type>()
        .values()
        .to_vec()
}

/// A folder with the given files and a prompts file with one line per file.
fn folder(files: &[(&str, Vec<u8>)]) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    for (name, bytes) in files {
        std::fs::write(images.join(name), bytes).unwrap();
    }
    let prompts = dir.path().join("prompts.txt");
    std::fs::write(&prompts, "an astronaut\n".repeat(files.len())).unwrap();
    (dir, images, prompts)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_webp_image_scores_like_the_same_pixels_in_png() {
    let im = astronaut();
    // each alone, so that both take the same place in the batch
    let alone = |name: &str, format: image::ImageFormat| {
        let (dir, images, prompts) = folder(&[(name, encode(&im, format))]);
        let out = dir.path().join("scores.parquet");
        let res = score(&images, &weights(), Some(&prompts), &out);
        assert!(res.status.success(), "{name}: {}", stderr(&res));
        scores(&out)
    };
    let png = alone("a.png", image::ImageFormat::Png);
    let webp = alone("a.webp", image::ImageFormat::WebP);
    assert_eq!(png.len(), 1);
    assert_eq!(
        png[0].to_bits(),
        webp[0].to_bits(),
        "lossless WebP: {png:?} {webp:?}"
    );
}

#[test]
fn a_truncated_jpeg_is_an_error_naming_the_file() {
    let jpeg = encode(&astronaut(), image::ImageFormat::Jpeg);
    let (dir, images, prompts) = folder(&[
        ("a.jpg", jpeg.clone()),
        ("cut.jpg", jpeg[..jpeg.len() * 2 / 3].to_vec()),
    ]);
    let out = dir.path().join("scores.parquet");
    let res = score(&images, &weights(), Some(&prompts), &out);
    assert_eq!(res.status.code(), Some(1), "{}", stderr(&res));
    assert!(
        stderr(&res).contains("cut.jpg: a truncated or corrupt JPEG"),
        "{}",
        stderr(&res)
    );
    assert!(!out.exists(), "nothing is written");
    // the intact one alone scores
    std::fs::remove_file(images.join("cut.jpg")).unwrap();
    std::fs::write(&prompts, "an astronaut\n").unwrap();
    let res = score(&images, &weights(), Some(&prompts), &out);
    assert!(res.status.success(), "{}", stderr(&res));
}

#[test]
fn weights_with_a_nan_are_an_error_naming_the_file_and_tensor() {
    let (dir, images, prompts) =
        folder(&[("a.png", encode(&astronaut(), image::ImageFormat::Png))]);
    let bad = dir.path().join("weights");
    std::fs::create_dir(&bad).unwrap();
    std::fs::copy(weights().join("config.json"), bad.join("config.json")).unwrap();
    let model = weights().join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&model, &candle_core::Device::Cpu).unwrap();
    let name = "vision_model.post_layernorm.weight";
    let t = &tensors[name];
    let nan = candle_core::Tensor::full(f32::NAN, t.shape(), &candle_core::Device::Cpu)
        .unwrap()
        .to_dtype(t.dtype())
        .unwrap();
    tensors.insert(name.to_owned(), nan);
    candle_core::safetensors::save(&tensors, bad.join("model.safetensors")).unwrap();
    let out = dir.path().join("scores.parquet");
    let res = score(&images, &bad, Some(&prompts), &out);
    assert_eq!(res.status.code(), Some(1), "{}", stderr(&res));
    assert!(
        stderr(&res).contains(&format!(
            "tensor `{name}` of {}",
            bad.join("model.safetensors").display()
        )),
        "{}",
        stderr(&res)
    );
    assert!(!out.exists(), "nothing is written");
}

#[test]
fn a_null_prompt_is_an_error_naming_the_row() {
    let dir = tempfile::tempdir().unwrap();
    let png = encode(&astronaut(), image::ImageFormat::Png);
    let table = dir.path().join("images.parquet");
    let schema = Arc::new(arrow_schema::Schema::new(vec![
        arrow_schema::Field::new("image", arrow_schema::DataType::Binary, false),
        arrow_schema::Field::new("prompt", arrow_schema::DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(BinaryArray::from(vec![png.as_slice(), png.as_slice()])) as ArrayRef,
            Arc::new(StringArray::from(vec![Some("an astronaut"), None])),
        ],
    )
    .unwrap();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&table).unwrap(), schema, None)
            .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let out = dir.path().join("scores.parquet");
    let res = score(&table, &weights(), None, &out);
    assert_eq!(res.status.code(), Some(2), "{}", stderr(&res));
    assert!(
        stderr(&res).contains("row 1: the prompt (column `prompt`) is null"),
        "{}",
        stderr(&res)
    );
    assert!(!out.exists(), "nothing is written");
}
