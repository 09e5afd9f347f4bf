//! The hook through which `run` consults a remote cache before computing a cell.
//!
//! spo-core knows no object store: a [`RemoteCache`] (implemented by the `spo-remote` crate)
//! only has to bring a cell's files into the private staging directory of the key's held
//! [`CellLock`](crate::CellLock) and hand back the manifest it found for the key. The store then
//! re-hashes every file against that manifest ([`CellLock`](crate::CellLock)'s
//! `check_fetched`) and commits it exactly like a computed cell: nothing fetched is committed
//! unless every byte matches, and a killed fetch leaves only a staging directory that the next
//! run sweeps.

use std::path::Path;

use crate::manifest::Manifest;

/// Why a remote cache could not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteFailure {
    /// The remote cannot be used at all (unreachable, unauthorised, no such bucket): `run`
    /// stops rather than silently computing everything the team has already computed.
    Unavailable,
    /// This key's remote entry is bad (a blob missing or not matching its digest, an
    /// unreadable manifest): nothing of it is committed, and `run` computes the cell itself.
    BadEntry,
}

/// An error of a remote cache, with a message naming what and where (never a credential).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct RemoteError {
    pub failure: RemoteFailure,
    pub message: String,
}

/// A cell a remote cache brought into a staging directory.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The manifest the remote holds for the key, parsed.
    pub manifest: Manifest,
    /// The same manifest as the remote holds it: committed byte for byte (a float written and
    /// read back by serde_json may differ in its last digit).
    pub json: Vec<u8>,
}

/// A remote cache: an action cache (cell key → manifest) and content-addressed blobs.
pub trait RemoteCache: Send + Sync {
    /// Where it is, for messages (a URL without credentials).
    fn location(&self) -> String;

    /// Brings the files of `key`'s cell into `staging` (an empty directory) and returns the
    /// manifest the remote holds for `key`; `None` if the remote does not hold the key.
    fn fetch(&self, key: &str, staging: &Path) -> Result<Option<Fetched>, RemoteError>;
}
