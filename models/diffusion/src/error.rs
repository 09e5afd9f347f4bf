//! Errors of spo-diffusion: what failed, and which file, key or config field it concerns.

use std::path::PathBuf;

/// A failure to build, load, save or run a diffusion model.
#[derive(Debug, thiserror::Error)]
pub enum DiffusionError {
    /// A tensor operation failed (including missing or misshaped weights, whose message names
    /// the full dotted key and the expected shape).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A file could not be read or written.
    #[error("cannot access `{path}`: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A safetensors file could not be parsed or written.
    #[error("`{path}`: {message}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A JSON config could not be parsed.
    #[error("cannot parse `{path}`: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// A config asks for something this implementation does not do.
    #[error("unsupported config: `{field}` = {value} ({hint})")]
    Unsupported {
        /// The config field.
        field: String,
        /// Its value.
        value: String,
        /// What is supported.
        hint: String,
    },
    /// A component of a pipeline folder does not fit the stage or the other components.
    #[error("`{path}`: {message}")]
    Incompatible {
        /// The file at fault.
        path: PathBuf,
        /// What was found and what was expected.
        message: String,
    },
    /// A LoRA file does not fit the model it is loaded into.
    #[error("LoRA: {0}")]
    Lora(String),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, DiffusionError>;

/// A candle error as it is, anything else wrapped: what a closure candle calls must return.
pub fn into_candle(e: DiffusionError) -> candle_core::Error {
    match e {
        DiffusionError::Candle(e) => e,
        other => candle_core::Error::wrap(other),
    }
}
