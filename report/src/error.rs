//! The report's error type.

use std::path::PathBuf;

/// Why a report could not be written or served.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] spo_core::Error),
    #[error(transparent)]
    Plan(#[from] spo_core::PlanError),
    /// The output directory is not one a report may replace.
    #[error(
        "{0}: exists and is not a spo-pipe report (no `{marker}` in it); \
         give an empty or new directory to --out",
        marker = crate::site::MARKER
    )]
    NotAReport(PathBuf),
    #[error(
        "port {port} on 127.0.0.1 is in use ({source}); pass another with --port, or 0 for any free port"
    )]
    PortInUse {
        port: u16,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
