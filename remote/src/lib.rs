//! spo-remote: the store's remote cache in an object store, the way Bazel splits one.
//!
//! ```text
//! <prefix>/ac/<key>.json               action cache: a cell key -> its manifest.json, as committed
//! <prefix>/cas/sha256/<ab>/<sha256>    content-addressed blobs: a file's bytes under their digest
//! ```
//!
//! Both are immutable: a blob's name is its content, and a key's manifest is the same cell
//! whoever computed it. Every upload is put-if-absent (`PutMode::Create`: S3's and Azure's
//! `If-None-Match: *`, GCS's `x-goog-if-generation-match: 0`), so two pushes of the same cells at once cannot clobber each other, and
//! a push writes a cell's blobs before its manifest, so a manifest in `ac/` only ever names
//! blobs that were there first. A pull streams each blob into the key's private staging
//! directory (under the key's lock), hashing as it writes; the store re-hashes everything against
//! the manifest before the one atomic rename that commits it (`spo_core::CellLock`), so a
//! corrupt or missing blob, or a killed pull, commits nothing.
//!
//! Remotes: `s3://bucket/prefix` (AWS, or any S3-compatible server through `AWS_ENDPOINT` /
//! `AWS_ENDPOINT_URL`), `gs://bucket/prefix`, `az://container/prefix` (and object_store's other
//! Azure forms), each with credentials from its usual environment variables (read by
//! `object_store`, never written anywhere, never part of a message), and `file:///dir` (a local
//! or shared directory); see `backend`.

use std::io::{Read, Write};
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart};
use sha2::{Digest, Sha256};
use spo_core::remote::{Fetched, RemoteCache, RemoteError, RemoteFailure};
use spo_core::{Manifest, Store};

mod backend;
pub use backend::FORMS;

/// Files larger than this are uploaded in parts (never held whole in memory).
const MULTIPART_ABOVE: u64 = 64 << 20;
/// Blobs moved at once.
const CONCURRENCY: usize = 8;

/// A remote cache.
pub struct Remote {
    objects: Arc<dyn ObjectStore>,
    prefix: String,
    url: String,
    /// The environment variables the backend reads, for "cannot use" messages.
    hint: &'static str,
    rt: tokio::runtime::Runtime,
    /// Whether the bucket (or directory) answered, checked once before the first use: a missing
    /// bucket answers every GET with "not found", which must not read as "not cached".
    reachable: OnceLock<Result<(), RemoteError>>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("url", &self.url).finish()
    }
}

/// What a push did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PushSummary {
    /// Cells whose manifest this push wrote.
    pub cells: usize,
    /// Cells the remote already held.
    pub present: usize,
    /// Blobs uploaded, and their bytes.
    pub blobs: usize,
    pub bytes: u64,
    /// Blobs the remote already held.
    pub blobs_present: usize,
}

fn unavailable(message: String) -> RemoteError {
    RemoteError {
        failure: RemoteFailure::Unavailable,
        message,
    }
}

fn bad_entry(message: String) -> RemoteError {
    RemoteError {
        failure: RemoteFailure::BadEntry,
        message,
    }
}

/// An error with its chain of causes, on one line.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s
}

impl Remote {
    /// Opens the remote at `url` (one of [`FORMS`]). Nothing is contacted until the first push
    /// or fetch.
    pub fn open(url: &str) -> Result<Remote, RemoteError> {
        Remote::open_with(url, &[])
    }

    /// [`Remote::open`] with settings (`AWS_*`, `GOOGLE_*`, `AZURE_*` variables) given here
    /// taking precedence over the environment's (for tools and tests that talk to several
    /// servers from one process).
    pub fn open_with(url: &str, settings: &[(&str, &str)]) -> Result<Remote, RemoteError> {
        let url = url.trim_end_matches('/').to_owned();
        let backend::Backend {
            objects,
            prefix,
            hint,
        } = backend::open(&url, settings)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| unavailable(format!("remote `{url}`: cannot start its runtime: {e}")))?;
        Ok(Remote {
            objects,
            prefix: prefix.trim_matches('/').to_owned(),
            url,
            hint,
            rt,
            reachable: OnceLock::new(),
        })
    }

    fn path(&self, rel: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(rel)
        } else {
            Path::from(format!("{}/{rel}", self.prefix))
        }
    }

    /// `ac/<key>.json`, relative to the prefix (as messages name it).
    fn ac_rel(key: &str) -> String {
        format!("ac/{key}.json")
    }

    /// `cas/sha256/<ab>/<digest>`, relative to the prefix.
    fn blob_rel(sha256: &str) -> String {
        format!("cas/sha256/{}/{sha256}", &sha256[..2.min(sha256.len())])
    }

    /// Checks once that the bucket or directory answers (a listing of the prefix's `ac/`).
    fn reachable(&self) -> Result<(), RemoteError> {
        self.reachable
            .get_or_init(|| {
                let ac = self.path("ac");
                self.rt
                    .block_on(async { self.objects.list_with_delimiter(Some(&ac)).await })
                    .map(|_| ())
                    .map_err(|e| {
                        unavailable(format!(
                            "cannot use the remote cache {}: {} ({})",
                            self.url,
                            chain(&e),
                            self.hint
                        ))
                    })
            })
            .clone()
    }

    /// Pushes the committed cells `keys` of `store`: each cell is checked against its manifest
    /// first (damaged bytes are never pushed), then its missing blobs are uploaded, then its
    /// manifest, each put-if-absent.
    pub fn push(
        &self,
        store: &Store,
        keys: &[String],
        on_cell: &(dyn Fn(&Manifest, bool) + Sync),
    ) -> Result<PushSummary, RemoteError> {
        self.reachable()?;
        let mut total = PushSummary::default();
        for key in keys {
            let m = store
                .committed(key)
                .map_err(|e| bad_entry(format!("cell {key}: {e}")))?
                .ok_or_else(|| bad_entry(format!("cell {key} is not in the store")))?;
            store
                .check(&m)
                .map_err(|e| bad_entry(format!("not pushing a damaged cell: {e}")))?;
            let ac = self.path(&Self::ac_rel(key));
            let present = self.rt.block_on(async {
                match self.objects.head(&ac).await {
                    Ok(_) => Ok(true),
                    Err(object_store::Error::NotFound { .. }) => Ok(false),
                    Err(e) => Err(self.io_error("check", &Self::ac_rel(key), &e)),
                }
            })?;
            if present {
                total.present += 1;
                on_cell(&m, false);
                continue;
            }
            let dir = store.cell_dir(key);
            let s = self.rt.block_on(async {
                futures::stream::iter(m.files.iter().map(|f| {
                    let path = dir.join(&f.path);
                    async move { self.push_blob(&path, &f.sha256, f.bytes).await }
                }))
                .buffer_unordered(CONCURRENCY)
                .try_fold(PushSummary::default(), |mut acc, up| async move {
                    match up {
                        Some(n) => {
                            acc.blobs += 1;
                            acc.bytes += n;
                        }
                        None => acc.blobs_present += 1,
                    }
                    Ok(acc)
                })
                .await
            })?;
            // Last: the manifest names only blobs that are there now.
            let manifest = std::fs::read(dir.join(spo_core::manifest::MANIFEST))
                .map_err(|e| bad_entry(format!("{}: {e}", dir.display())))?;
            self.rt.block_on(async {
                match self
                    .objects
                    .put_opts(&ac, PutPayload::from(manifest), PutMode::Create.into())
                    .await
                {
                    Ok(_)
                    | Err(object_store::Error::AlreadyExists { .. })
                    | Err(object_store::Error::Precondition { .. }) => Ok(()),
                    Err(e) => Err(self.io_error("upload", &Self::ac_rel(key), &e)),
                }
            })?;
            total.cells += 1;
            total.blobs += s.blobs;
            total.bytes += s.bytes;
            total.blobs_present += s.blobs_present;
            on_cell(&m, true);
        }
        Ok(total)
    }

    /// Uploads one file as a blob unless the remote has it: `Some(bytes)` if uploaded.
    async fn push_blob(
        &self,
        file: &FsPath,
        sha256: &str,
        bytes: u64,
    ) -> Result<Option<u64>, RemoteError> {
        let rel = Self::blob_rel(sha256);
        let path = self.path(&rel);
        match self.objects.head(&path).await {
            Ok(meta) if meta.size == bytes => return Ok(None),
            // A blob of the wrong size under a digest's name (a torn upload by some other tool):
            // replaced below, since a digest names exactly one content.
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(self.io_error("check", &rel, &e)),
        }
        let read_err = |e: std::io::Error| bad_entry(format!("{}: {e}", file.display()));
        let r = if bytes <= MULTIPART_ABOVE {
            let data = std::fs::read(file).map_err(read_err)?;
            self.objects
                .put_opts(
                    &path,
                    PutPayload::from(data),
                    PutOptions::from(PutMode::Create),
                )
                .await
                .map(|_| ())
        } else {
            // Parts: S3 has no put-if-absent for multipart uploads, but the bytes under a
            // digest's name are the same whoever writes them (checked against the manifest
            // above), so a concurrent upload writes what is there.
            let upload = self
                .objects
                .put_multipart(&path)
                .await
                .map_err(|e| self.io_error("upload", &rel, &e))?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, 16 << 20);
            let mut f = std::fs::File::open(file).map_err(read_err)?;
            let mut buf = vec![0u8; 8 << 20];
            loop {
                let n = f.read(&mut buf).map_err(read_err)?;
                if n == 0 {
                    break;
                }
                w.wait_for_capacity(4)
                    .await
                    .map_err(|e| self.io_error("upload", &rel, &e))?;
                w.put(Bytes::copy_from_slice(&buf[..n]));
            }
            w.finish().await.map(|_| ())
        };
        match r {
            Ok(()) => Ok(Some(bytes)),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(None),
            Err(e) => Err(self.io_error("upload", &rel, &e)),
        }
    }

    /// The bytes of the object at `rel` (relative to the prefix), `None` if there is none:
    /// direct access, for tools and tests.
    pub fn raw_get(&self, rel: &str) -> Result<Option<Vec<u8>>, RemoteError> {
        self.rt.block_on(async {
            match self.objects.get(&self.path(rel)).await {
                Ok(g) => g
                    .bytes()
                    .await
                    .map(|b| Some(b.to_vec()))
                    .map_err(|e| self.io_error("download", rel, &e)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(self.io_error("download", rel, &e)),
            }
        })
    }

    /// Writes (replacing) the object at `rel`: direct access, for tools and tests.
    pub fn raw_put(&self, rel: &str, bytes: Vec<u8>) -> Result<(), RemoteError> {
        self.rt
            .block_on(self.objects.put(&self.path(rel), PutPayload::from(bytes)))
            .map(|_| ())
            .map_err(|e| self.io_error("upload", rel, &e))
    }

    /// Writes the object at `rel` unless one is there (`PutMode::Create`, as every upload of a
    /// push): whether it wrote. Direct access, for tools and tests.
    pub fn raw_put_if_absent(&self, rel: &str, bytes: Vec<u8>) -> Result<bool, RemoteError> {
        let r = self.rt.block_on(self.objects.put_opts(
            &self.path(rel),
            PutPayload::from(bytes),
            PutMode::Create.into(),
        ));
        match r {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(false),
            Err(e) => Err(self.io_error("upload", rel, &e)),
        }
    }

    /// Removes the object at `rel`: direct access, for tools and tests.
    pub fn raw_delete(&self, rel: &str) -> Result<(), RemoteError> {
        self.rt
            .block_on(self.objects.delete(&self.path(rel)))
            .map_err(|e| self.io_error("delete", rel, &e))
    }

    /// The objects under `rel` (relative to the prefix), sorted: direct access.
    pub fn raw_list(&self, rel: &str) -> Result<Vec<String>, RemoteError> {
        let base = self.path(rel);
        let mut v: Vec<String> = self
            .rt
            .block_on(self.objects.list(Some(&base)).try_collect::<Vec<_>>())
            .map_err(|e| self.io_error("list", rel, &e))?
            .into_iter()
            .map(|m| {
                let full = m.location.to_string();
                match self.prefix.is_empty() {
                    true => full,
                    false => full
                        .strip_prefix(&format!("{}/", self.prefix))
                        .map_or(full.clone(), str::to_owned),
                }
            })
            .collect();
        v.sort();
        Ok(v)
    }

    fn io_error(&self, what: &str, rel: &str, e: &object_store::Error) -> RemoteError {
        unavailable(format!(
            "remote cache {}: cannot {what} {rel}: {}",
            self.url,
            chain(e)
        ))
    }

    /// Streams the blob `sha256` into `dest`, hashing as it writes.
    async fn fetch_blob(
        &self,
        key: &str,
        file: &spo_core::FileEntry,
        dest: PathBuf,
    ) -> Result<(), RemoteError> {
        let rel = Self::blob_rel(&file.sha256);
        let named = || {
            format!(
                "the remote manifest {}/{} names blob {}/{rel} (file `{}`)",
                self.url,
                Self::ac_rel(key),
                self.url,
                file.path
            )
        };
        let got = match self.objects.get(&self.path(&rel)).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(bad_entry(format!("{}, which is missing", named())));
            }
            Err(e) => return Err(self.io_error("download", &rel, &e)),
        };
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| bad_entry(format!("{}: {e}", parent.display())))?;
        }
        let write_err = |e: std::io::Error| bad_entry(format!("{}: {e}", dest.display()));
        let mut out = std::fs::File::create(&dest).map_err(write_err)?;
        let mut h = Sha256::new();
        let mut n = 0u64;
        let mut stream = got.into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.io_error("download", &rel, &e))?;
            h.update(&chunk);
            n += chunk.len() as u64;
            out.write_all(&chunk).map_err(write_err)?;
        }
        let sha = hex::encode(h.finalize());
        if sha != file.sha256 || n != file.bytes {
            return Err(bad_entry(format!(
                "{}, which is corrupt: its bytes hash to {sha} ({n} bytes), not {} ({} bytes)",
                named(),
                file.sha256,
                file.bytes
            )));
        }
        Ok(())
    }
}

impl RemoteCache for Remote {
    fn location(&self) -> String {
        self.url.clone()
    }

    fn fetch(&self, key: &str, staging: &FsPath) -> Result<Option<Fetched>, RemoteError> {
        self.reachable()?;
        let ac_rel = Self::ac_rel(key);
        let bytes = self.rt.block_on(async {
            match self.objects.get(&self.path(&ac_rel)).await {
                Ok(g) => g
                    .bytes()
                    .await
                    .map(Some)
                    .map_err(|e| self.io_error("download", &ac_rel, &e)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(self.io_error("download", &ac_rel, &e)),
            }
        })?;
        let Some(bytes) = bytes else {
            return Ok(None);
        };
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
            bad_entry(format!(
                "the remote manifest {}/{ac_rel} cannot be read: {e}",
                self.url
            ))
        })?;
        if m.key != key {
            return Err(bad_entry(format!(
                "the remote manifest {}/{ac_rel} is for key {}",
                self.url, m.key
            )));
        }
        for f in &m.files {
            let plain = !f.path.is_empty()
                && FsPath::new(&f.path)
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)));
            if !plain || f.sha256.len() != 64 || !f.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad_entry(format!(
                    "the remote manifest {}/{ac_rel} names a file `{}` (sha256 {}) that no cell can hold",
                    self.url, f.path, f.sha256
                )));
            }
        }
        self.rt.block_on(async {
            futures::stream::iter(
                m.files
                    .iter()
                    .map(|f| self.fetch_blob(key, f, staging.join(&f.path))),
            )
            .buffer_unordered(CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await
        })?;
        Ok(Some(Fetched {
            manifest: m,
            json: bytes.to_vec(),
        }))
    }
}
