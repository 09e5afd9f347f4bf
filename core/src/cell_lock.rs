//! [`CellLock`]: the only way into the store. Held while a cell is computed; its commit makes
//! the cell durable and readable by every user of the store.

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::committed::Committed;
use crate::error::Error;
use crate::fileinfo;
use crate::key::output_digest;
use crate::lease::Lease;
use crate::manifest::{FileEntry, MANIFEST, Manifest};
use crate::memo::Stamp;
use crate::remote::Fetched;
use crate::store::{Store, hash_file, sync_dir, write_synced};

/// The held lock on one key whose cell is not committed, with the cell's private staging
/// directory and its scratch (checkpoint) directory. Dropping it without committing removes the
/// staging directory, keeps the scratch directory for a resume, and releases the lock.
#[derive(Debug)]
pub struct CellLock {
    store: Store,
    key: String,
    /// The key's lease (held until this is dropped, after the commit or the failure). Declared
    /// before `file` so that it is released first, while the OS lock is still held: a process
    /// of this machine that gets the OS lock next never finds this lease still there (it would
    /// take it for a dead process's, and the two releases would race).
    lease: Lease,
    file: File,
    staging: PathBuf,
    scratch: PathBuf,
    committed: bool,
}

impl CellLock {
    pub(crate) fn new(
        store: Store,
        key: &str,
        file: File,
        lease: Lease,
    ) -> Result<CellLock, Error> {
        let staging = store.new_staging(key)?;
        let scratch = store.scratch_dir(key);
        fs::create_dir_all(&scratch).map_err(|e| Error::io(&scratch, e))?;
        Ok(CellLock {
            store,
            key: key.to_owned(),
            file,
            lease,
            staging,
            scratch,
            committed: false,
        })
    }

    pub fn key(&self) -> &str {
        &self.key
    }
    /// Where the cell's files are written; committed as a whole.
    pub fn staging(&self) -> &Path {
        &self.staging
    }
    /// Checkpoints that survive a failed or killed attempt.
    pub fn scratch(&self) -> &Path {
        &self.scratch
    }
    /// Another handle on the lock (the same open file), for a child process to inherit: the
    /// key stays locked ‒ its staging and scratch directories untouched by any other run ‒
    /// until every process holding a handle has ended.
    pub fn holder(&self) -> Result<File, Error> {
        self.file
            .try_clone()
            .map_err(|e| Error::io(&self.store.lock_path(&self.key), e))
    }

    /// Starts the attempt over: moves the scratch directory (an unreadable checkpoint) into
    /// `runs/quarantine/`, returning where, and empties both directories.
    pub fn restart(&mut self) -> Result<PathBuf, Error> {
        let to = self.store.quarantine(&self.scratch)?;
        for d in [&self.scratch, &self.staging] {
            if d.exists() {
                fs::remove_dir_all(d).map_err(|e| Error::io(d, e))?;
            }
            fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
        }
        Ok(to)
    }

    /// Empties the staging directory (what a failed fetch from a remote cache left there), so
    /// the cell can be computed in it.
    pub fn reset_staging(&mut self) -> Result<(), Error> {
        if self.staging.exists() {
            fs::remove_dir_all(&self.staging).map_err(|e| Error::io(&self.staging, e))?;
        }
        fs::create_dir_all(&self.staging).map_err(|e| Error::io(&self.staging, e))
    }

    /// Checks a cell fetched from a remote cache into the staging directory against the
    /// manifest the remote holds for this key, before anything is committed: the manifest is
    /// this key's, names only plain relative paths, the staging directory holds exactly its
    /// files, each re-hashed here to its recorded SHA-256 and size, and the file digests give
    /// the manifest's content digest. [`Error::BadFetch`] names the first thing that differs.
    pub fn check_fetched(&self, m: &Manifest) -> Result<(), Error> {
        let bad = |path: &Path, message: String| Error::BadFetch {
            key: self.key.clone(),
            path: path.to_owned(),
            message,
        };
        if m.key != self.key {
            return Err(bad(
                &self.staging,
                format!("the remote manifest is for key {}", m.key),
            ));
        }
        let mut listed = std::collections::BTreeMap::new();
        for f in &m.files {
            let plain = !f.path.is_empty()
                && Path::new(&f.path)
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)));
            if !plain || f.path == MANIFEST || f.path.contains('\\') {
                return Err(bad(
                    &self.staging,
                    format!(
                        "the manifest names a file `{}` that a cell cannot hold",
                        f.path
                    ),
                ));
            }
            if listed.insert(f.path.as_str(), f).is_some() {
                return Err(bad(
                    &self.staging,
                    format!("the manifest lists `{}` twice", f.path),
                ));
            }
        }
        let mut seen = 0usize;
        for entry in walkdir::WalkDir::new(&self.staging) {
            let entry = entry.map_err(|e| Error::io(&self.staging, e.into()))?;
            let path = entry.path();
            if entry.file_type().is_dir() {
                continue;
            }
            let rel = path
                .strip_prefix(&self.staging)
                .map_err(|_| Error::corrupt(path, "outside staging"))?
                .to_string_lossy()
                .into_owned();
            let Some(f) = listed.get(rel.as_str()) else {
                return Err(bad(path, "not in the manifest".into()));
            };
            if !entry.file_type().is_file() {
                return Err(bad(path, "not a regular file".into()));
            }
            let (sha256, bytes) = hash_file(path)?;
            if sha256 != f.sha256 || bytes != f.bytes {
                return Err(bad(
                    path,
                    format!(
                        "content is sha256 {sha256} ({bytes} bytes), the manifest says {} ({} bytes)",
                        f.sha256, f.bytes
                    ),
                ));
            }
            seen += 1;
        }
        if seen != listed.len() {
            let missing = listed
                .keys()
                .find(|p| !self.staging.join(p).is_file())
                .map_or_else(String::new, |p| (*p).to_owned());
            return Err(bad(
                &self.staging.join(&missing),
                "listed in the manifest but not fetched".into(),
            ));
        }
        let digest = output_digest(m.files.iter().map(|f| (f.path.as_str(), f.sha256.as_str())));
        if digest != m.digest {
            return Err(bad(
                &self.staging,
                format!(
                    "the files give content digest {digest}, the manifest says {}",
                    m.digest
                ),
            ));
        }
        Ok(())
    }

    /// Commits a cell fetched from a remote cache, after [`CellLock::check_fetched`]; the
    /// manifest is kept as the remote recorded it (its host, timings and metrics).
    pub fn commit_fetched(self, cell: Fetched) -> Result<(Manifest, Committed), Error> {
        self.check_fetched(&cell.manifest)?;
        self.commit_cell_as(cell.manifest, Some(cell.json))
    }

    /// Commits the cell: checks that the output holds only files and directories, hashes the
    /// files its writers did not, sets modes (0644 files, 0755 directories and executables),
    /// fsyncs every file and directory, writes the manifest, renames the staging directory to
    /// `store/<key>` and fsyncs `store/`; then records each file's stat memo and removes the
    /// scratch directory. `manifest.files` holds the digests recorded while writing.
    pub fn commit(self, manifest: Manifest) -> Result<Manifest, Error> {
        self.commit_cell(manifest).map(|(m, _)| m)
    }

    /// [`CellLock::commit`], also recording the cell in the cell cache and returning it as
    /// runs resolve it.
    pub(crate) fn commit_cell(self, manifest: Manifest) -> Result<(Manifest, Committed), Error> {
        self.commit_cell_as(manifest, None)
    }

    /// [`CellLock::commit_cell`], writing `json` as the manifest file if given (a fetched
    /// cell's manifest as its remote holds it, checked against the files by `check_fetched`).
    pub(crate) fn commit_cell_as(
        mut self,
        mut manifest: Manifest,
        json: Option<Vec<u8>>,
    ) -> Result<(Manifest, Committed), Error> {
        manifest.key.clone_from(&self.key);
        let mut files = Vec::new();
        let mut dirs = Vec::new();
        for entry in walkdir::WalkDir::new(&self.staging).sort_by_file_name() {
            let entry = entry.map_err(|e| Error::io(&self.staging, e.into()))?;
            let path = entry.path();
            let ft = entry.file_type();
            if ft.is_dir() {
                dirs.push(path.to_owned());
                continue;
            }
            let rel = path
                .strip_prefix(&self.staging)
                .map_err(|_| Error::corrupt(path, "outside staging"))?
                .to_string_lossy()
                .replace('\\', "/");
            if !ft.is_file() {
                return Err(Error::BadOutput {
                    path: path.to_owned(),
                    message: "a cell's output may hold only regular files and directories".into(),
                });
            }
            if rel == MANIFEST {
                return Err(Error::BadOutput {
                    path: path.to_owned(),
                    message: format!("a stage may not write `{MANIFEST}`; the store writes it"),
                });
            }
            let meta = entry.metadata().map_err(|e| Error::io(path, e.into()))?;
            let exec = meta.permissions().mode() & 0o111 != 0;
            set_mode(path, if exec { 0o755 } else { 0o644 })?;
            let (sha256, bytes) = match manifest.files.iter().find(|f| f.path == rel) {
                Some(f) => (f.sha256.clone(), f.bytes),
                None => hash_file(path)?,
            };
            File::open(path)
                .and_then(|f| f.sync_all())
                .map_err(|e| Error::io(path, e))?;
            files.push(FileEntry {
                info: fileinfo::inspect(path),
                path: rel,
                sha256,
                bytes,
            });
        }
        // Children before parents, so each directory is synced after everything in it; the
        // staging directory itself (the first) once, after the manifest is written into it.
        for (i, d) in dirs.iter().enumerate().rev() {
            set_mode(d, 0o755)?;
            if i > 0 {
                sync_dir(d)?;
            }
        }
        manifest.digest = output_digest(files.iter().map(|f| (f.path.as_str(), f.sha256.as_str())));
        manifest.files = files;
        let mpath = self.staging.join(MANIFEST);
        let json = match json {
            Some(j) => j,
            None => serde_json::to_vec_pretty(&manifest).map_err(|e| Error::corrupt(&mpath, e))?,
        };
        write_synced(&mpath, &json)?;
        set_mode(&mpath, 0o644)?;
        sync_dir(&self.staging)?;
        // Still ours? A lease taken over while this process stalled is the new holder's.
        self.lease.check()?;
        let dest = self.store.cell_dir(&self.key);
        if dest.exists() {
            // Committed by a process that ignored the lock: keep theirs, it has the same inputs.
            let theirs = self
                .store
                .committed_cell(&self.key)?
                .ok_or_else(|| Error::corrupt(&dest, "committed without a manifest"))?;
            return Ok((Manifest::read(&dest)?, theirs));
        }
        fs::rename(&self.staging, &dest).map_err(|e| Error::io(&dest, e))?;
        self.committed = true;
        sync_dir(&self.store.root().join("store"))?;
        let memo = self.store.record_memo(&manifest)?;
        let stamp = Stamp::of(&dest.join(MANIFEST)).map_err(|e| Error::io(&dest, e))?;
        let cell = self.store.remember(&manifest, stamp, &memo);
        if self.scratch.exists() {
            fs::remove_dir_all(&self.scratch).map_err(|e| Error::io(&self.scratch, e))?;
        }
        Ok((manifest, cell))
    }
}

impl Drop for CellLock {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.staging);
        }
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), Error> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| Error::io(path, e))
}
