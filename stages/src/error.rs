//! The stages' one error type. Every library error a stage meets converts with `?` and keeps
//! its source chain up to the orchestrator, which receives it as a [`StageError`]; where a file
//! is the context, [`At::at`] names it.

use std::path::{Path, PathBuf};

use spo_core::StageError;
use spo_core::param::ParamError;

/// What went wrong inside a stage kind.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The orchestrator's side: a param, an input, the store, a checkpoint, or a message.
    #[error(transparent)]
    Stage(#[from] StageError),
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    #[error(transparent)]
    Nn(#[from] spo_nn::NnError),
    #[error(transparent)]
    Diffusion(#[from] spo_diffusion::DiffusionError),
    #[error(transparent)]
    Clip(#[from] spo_clip::ClipError),
    #[error(transparent)]
    Sd(#[from] spo_sd::SdError),
    #[error(transparent)]
    World(#[from] spo_world::WorldError),
    #[error(transparent)]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error(transparent)]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Image(#[from] image::ImageError),
    /// Any of the above, about one file.
    #[error("{}: {source}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: Box<Error>,
    },
}

impl From<ParamError> for Error {
    fn from(e: ParamError) -> Self {
        Error::Stage(e.into())
    }
}

impl Error {
    /// A stage failure explained by `message` alone.
    pub fn failed(message: impl Into<String>) -> Self {
        Error::Stage(StageError::Failed(message.into()))
    }
}

impl From<Error> for StageError {
    fn from(e: Error) -> Self {
        match e {
            Error::Stage(e) => e,
            other => StageError::Other(Box::new(other)),
        }
    }
}

/// The stages' result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Names the file an error concerns.
pub trait At<T> {
    /// The error, if any, wrapped with `path`.
    fn at(self, path: &Path) -> Result<T>;
}

impl<T, E: Into<Error>> At<T> for std::result::Result<T, E> {
    fn at(self, path: &Path) -> Result<T> {
        self.map_err(|e| Error::File {
            path: path.to_owned(),
            source: Box::new(e.into()),
        })
    }
}
