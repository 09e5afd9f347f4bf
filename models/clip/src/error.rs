//! Errors of spo-clip's file- and user-facing functions.
//!
//! Model code returns `candle_core::Result`; everything that opens a file or takes user input
//! (weights, configs, images, prompts) returns [`ClipError`], which names the file and, for
//! weights, the tensor key and the shape the model expects.

use std::path::PathBuf;

/// What went wrong loading a model, a tokenizer or an image, or scoring.
#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A file could not be read.
    #[error("cannot read `{path}`: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A weights file could not be parsed (not safetensors, not a PyTorch pickle).
    #[error("cannot read weights from `{path}`: {source}")]
    WeightsFormat {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: candle_core::Error,
    },
    /// A weights file lacks a tensor the model needs.
    #[error("`{path}` has no tensor `{key}` (expected shape {expected:?})")]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The key, in the model's (HF) naming.
        key: String,
        /// The shape the model expects.
        expected: Vec<usize>,
    },
    /// A weights file holds a tensor of the wrong shape.
    #[error("`{path}`: tensor `{key}` has shape {got:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The file.
        path: PathBuf,
        /// The key, in the model's (HF) naming.
        key: String,
        /// The shape the model expects.
        expected: Vec<usize>,
        /// The shape in the file.
        got: Vec<usize>,
    },
    /// A weights file holds a tensor of a non-float dtype where weights are expected.
    #[error(
        "`{path}`: tensor `{key}` has dtype {got:?}, expected a float dtype (f32, f16, bf16 or f64) of shape {expected:?}"
    )]
    DTypeMismatch {
        /// The file.
        path: PathBuf,
        /// The key, in the model's (HF) naming.
        key: String,
        /// The shape the model expects.
        expected: Vec<usize>,
        /// The dtype in the file.
        got: candle_core::DType,
    },
    /// A config file is not valid JSON or does not describe the model.
    #[error("invalid config `{path}`: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A folder lacks a file the model needs.
    #[error("`{dir}` contains none of {candidates:?}")]
    MissingFile {
        /// The folder searched.
        dir: PathBuf,
        /// The file names looked for.
        candidates: Vec<String>,
    },
    /// An image could not be decoded.
    #[error("cannot decode image `{path}`: {source}")]
    Image {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: image::ImageError,
    },
    /// A tokenizer could not be built or failed on a prompt.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The caller passed inconsistent inputs.
    #[error("{0}")]
    Input(String),
}
