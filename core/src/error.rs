//! The orchestrator's error type: one for the store and everything around it, keeping the
//! structure (which file, which cell) so callers can act on it and messages can name it.

use std::path::{Path, PathBuf};

/// Everything that can go wrong outside a stage's own code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: corrupt: {message}", path.display())]
    Corrupt { path: PathBuf, message: String },
    /// A committed cell no longer holds the bytes its manifest records.
    #[error(
        "cell {label} ({key}) is damaged: {}: {problem}; run `spo-pipe verify --repair` to quarantine it so the next run recomputes it",
        path.display()
    )]
    Damaged {
        key: String,
        label: String,
        path: PathBuf,
        problem: String,
    },
    /// A cell fetched from a remote cache does not match the manifest the remote holds for it
    /// (nothing of it is committed).
    #[error("cell {key} fetched from the remote cache was not committed: {}: {message}", path.display())]
    BadFetch {
        key: String,
        path: PathBuf,
        message: String,
    },
    /// This process's lease on a key was taken over (it went silent longer than the stale
    /// period): the cell is not committed, so the new holder's work is never overwritten.
    #[error("{}: the lease on this key is now held by {holder}; not committing", path.display())]
    LeaseLost { path: PathBuf, holder: String },
    /// A stage wrote something the store cannot commit.
    #[error("{}: {message}", path.display())]
    BadOutput { path: PathBuf, message: String },
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_owned(),
            source,
        }
    }
    pub(crate) fn corrupt(path: &Path, message: impl ToString) -> Self {
        Error::Corrupt {
            path: path.to_owned(),
            message: message.to_string(),
        }
    }
}
