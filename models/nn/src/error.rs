//! Errors of spo-nn's file-facing functions.

use std::path::PathBuf;

/// What went wrong loading or saving state, with the file and tensor involved.
#[derive(Debug, thiserror::Error)]
pub enum NnError {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A state file could not be read or written.
    #[error("cannot access `{path}`: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: candle_core::Error,
    },
    /// A state file lacks a tensor the optimiser needs.
    #[error("`{path}` has no tensor `{key}` (expected shape {expected:?})")]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The full key.
        key: String,
        /// The shape the tensor should have.
        expected: Vec<usize>,
    },
    /// A state file holds a tensor of the wrong shape.
    #[error("`{path}`: tensor `{key}` has shape {got:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The file.
        path: PathBuf,
        /// The full key.
        key: String,
        /// The shape the tensor should have.
        expected: Vec<usize>,
        /// The shape in the file.
        got: Vec<usize>,
    },
}
