//! The content-addressed store under `runs/`.
//!
//! ```text
//! runs/store/<key>/      committed cells: their files and manifest.json (never modified)
//! runs/staging/<key>.*   one private directory per attempt; swept when its owner is gone
//! runs/scratch/<key>/    checkpoints of an unfinished cell, removed when it commits
//! runs/locks/<key>.lock  OS file locks: one computation of a key at a time, across processes
//! runs/cells/<slot>.json the key parts of the last committed run in each slot (for `why`)
//! runs/index/<key>.parquet  the run index, one file per committed cell
//! ```
//! A cell is committed by writing its manifest into the staging directory, fsyncing it and
//! renaming the directory into `store/` (atomic on one filesystem), so a killed or failed
//! attempt commits nothing. Locks are released by the OS when their process dies.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::fileinfo;
use crate::key::{KeyParts, output_digest};
use crate::manifest::{FileEntry, MANIFEST, Manifest};

/// A store rooted at a `runs/` directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// A held lock on one key; dropping it releases the lock.
#[derive(Debug)]
pub struct KeyLock {
    _file: File,
}

/// The last committed run of a cell: its key and the parts of that key.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Pointer {
    pub key: String,
    pub label: String,
    pub parts: KeyParts,
    /// Unix seconds at commit.
    pub committed: f64,
}

/// A file whose bytes no longer match its manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Damage {
    pub key: String,
    pub path: String,
    pub problem: String,
}

const DIRS: [&str; 6] = ["store", "staging", "scratch", "locks", "cells", "index"];

impl Store {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store, Error> {
        let root = root.into();
        for d in DIRS {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(|e| Error::io(&p, e))?;
        }
        Ok(Store { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `runs/store/<key>`.
    pub fn cell_dir(&self, key: &str) -> PathBuf {
        self.root.join("store").join(key)
    }
    /// `runs/scratch/<key>`: checkpoints of an unfinished cell.
    pub fn scratch_dir(&self, key: &str) -> PathBuf {
        self.root.join("scratch").join(key)
    }
    /// `runs/index`.
    pub fn index_dir(&self) -> PathBuf {
        self.root.join("index")
    }

    /// The manifest of a committed key, or `None` if it is not committed.
    pub fn committed(&self, key: &str) -> Result<Option<Manifest>, Error> {
        let dir = self.cell_dir(key);
        match fs::metadata(dir.join(MANIFEST)) {
            Ok(_) => Manifest::read(&dir).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(&dir, e)),
        }
    }

    fn lock_file(&self, key: &str) -> Result<File, Error> {
        let p = self.root.join("locks").join(format!("{key}.lock"));
        fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(|e| Error::io(&p, e))
    }

    /// Takes the lock on `key` if no other process holds it.
    pub fn try_lock(&self, key: &str) -> Result<Option<KeyLock>, Error> {
        let f = self.lock_file(key)?;
        match f.try_lock() {
            Ok(()) => Ok(Some(KeyLock { _file: f })),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(Error::io(&self.root.join("locks"), e)),
        }
    }

    /// Waits for the lock on `key`.
    pub fn lock(&self, key: &str) -> Result<KeyLock, Error> {
        let f = self.lock_file(key)?;
        f.lock()
            .map_err(|e| Error::io(&self.root.join("locks"), e))?;
        Ok(KeyLock { _file: f })
    }

    /// A fresh staging directory for one attempt at `key` (hold its lock).
    pub fn new_staging(&self, key: &str) -> Result<PathBuf, Error> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let p = self
            .root
            .join("staging")
            .join(format!("{key}.{}.{nanos}", std::process::id()));
        fs::create_dir_all(&p).map_err(|e| Error::io(&p, e))?;
        Ok(p)
    }

    /// Removes staging directories left by killed or failed attempts (those whose key is not
    /// locked by a live process). Returns how many were removed.
    pub fn sweep_staging(&self) -> Result<usize, Error> {
        let dir = self.root.join("staging");
        let mut removed = 0;
        for entry in fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let entry = entry.map_err(|e| Error::io(&dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let key = name.split('.').next().unwrap_or_default();
            if let Some(_lock) = self.try_lock(key)? {
                fs::remove_dir_all(entry.path()).map_err(|e| Error::io(&entry.path(), e))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Commits a finished attempt: hashes files not already hashed by their writers, writes the
    /// manifest, fsyncs and renames the staging directory to `store/<key>`.
    /// `manifest.files` holds the digests recorded while writing; it is completed here.
    pub fn commit(&self, staging: &Path, mut manifest: Manifest) -> Result<Manifest, Error> {
        let mut files = Vec::new();
        for entry in walkdir::WalkDir::new(staging).sort_by_file_name() {
            let entry = entry.map_err(|e| Error::Io {
                path: staging.to_owned(),
                source: e.into(),
            })?;
            if !entry.file_type().is_file() {
                continue;
            }
            let rel = entry
                .path()
                .strip_prefix(staging)
                .map_err(|_| Error::Corrupt {
                    path: entry.path().to_owned(),
                    message: "outside staging".into(),
                })?;
            let rel = rel.to_string_lossy().replace('\\', "/");
            if rel == MANIFEST {
                return Err(Error::Corrupt {
                    path: entry.path().to_owned(),
                    message: format!("a stage may not write `{MANIFEST}`; the store writes it"),
                });
            }
            let (sha256, bytes) = match manifest.files.iter().find(|f| f.path == rel) {
                Some(f) => (f.sha256.clone(), f.bytes),
                None => hash_file(entry.path())?,
            };
            files.push(FileEntry {
                info: fileinfo::inspect(entry.path()),
                path: rel,
                sha256,
                bytes,
            });
        }
        manifest.digest = output_digest(files.iter().map(|f| (f.path.as_str(), f.sha256.as_str())));
        manifest.files = files;
        let mpath = staging.join(MANIFEST);
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Corrupt {
            path: mpath.clone(),
            message: e.to_string(),
        })?;
        write_synced(&mpath, &json)?;
        sync_dir(staging)?;
        let dest = self.cell_dir(&manifest.key);
        if dest.exists() {
            // Another process committed the same key first (same inputs, same bytes): keep theirs.
            fs::remove_dir_all(staging).map_err(|e| Error::io(staging, e))?;
            return Manifest::read(&dest);
        }
        fs::rename(staging, &dest).map_err(|e| Error::io(&dest, e))?;
        sync_dir(&self.root.join("store"))?;
        Ok(manifest)
    }

    /// Records `pointer` as the last committed run in `slot` (a cell's place in the pipeline:
    /// its label, e.g. `spo[k=3]`, which stays the same when a base param changes) and `seed`.
    pub fn write_pointer(
        &self,
        slot: &str,
        seed: Option<u64>,
        pointer: &Pointer,
    ) -> Result<(), Error> {
        let p = self.pointer_path(slot, seed);
        let json = serde_json::to_vec_pretty(pointer).map_err(|e| Error::Corrupt {
            path: p.clone(),
            message: e.to_string(),
        })?;
        write_atomic(&p, &json)
    }

    /// The last committed run in `slot`, if any.
    pub fn pointer(&self, slot: &str, seed: Option<u64>) -> Result<Option<Pointer>, Error> {
        let p = self.pointer_path(slot, seed);
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| Error::Corrupt {
                    path: p,
                    message: e.to_string(),
                }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(&p, e)),
        }
    }

    fn pointer_path(&self, slot: &str, seed: Option<u64>) -> PathBuf {
        let cell = &hex::encode(Sha256::digest(slot.as_bytes()))[..32];
        let name = match seed {
            Some(s) => format!("{cell}-s{s}.json"),
            None => format!("{cell}.json"),
        };
        self.root.join("cells").join(name)
    }

    /// Every committed key.
    pub fn keys(&self) -> Result<Vec<String>, Error> {
        let dir = self.root.join("store");
        let mut keys = Vec::new();
        for e in fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let e = e.map_err(|e| Error::io(&dir, e))?;
            keys.push(e.file_name().to_string_lossy().into_owned());
        }
        keys.sort_unstable();
        Ok(keys)
    }

    /// Keys that start with `prefix`.
    pub fn keys_with_prefix(&self, prefix: &str) -> Result<Vec<String>, Error> {
        Ok(self
            .keys()?
            .into_iter()
            .filter(|k| k.starts_with(prefix))
            .collect())
    }

    /// Size in bytes of a committed cell.
    pub fn size(&self, key: &str) -> u64 {
        walkdir::WalkDir::new(self.cell_dir(key))
            .into_iter()
            .filter_map(Result::ok)
            .filter_map(|e| e.metadata().ok())
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .sum()
    }

    /// Removes a committed cell (under its lock, so a reader that is computing it is not hurt).
    pub fn remove(&self, key: &str) -> Result<bool, Error> {
        let Some(_lock) = self.try_lock(key)? else {
            return Ok(false);
        };
        let dir = self.cell_dir(key);
        // Rename first so a half-deleted cell never looks committed.
        let trash = self
            .root
            .join("staging")
            .join(format!("{key}.gc.{}", std::process::id()));
        fs::rename(&dir, &trash).map_err(|e| Error::io(&dir, e))?;
        fs::remove_dir_all(&trash).map_err(|e| Error::io(&trash, e))?;
        let scratch = self.scratch_dir(key);
        if scratch.exists() {
            fs::remove_dir_all(&scratch).map_err(|e| Error::io(&scratch, e))?;
        }
        Ok(true)
    }

    /// Re-hashes every committed file and reports those whose bytes changed or vanished.
    pub fn verify(&self, mut on_cell: impl FnMut(&str)) -> Result<Vec<Damage>, Error> {
        let mut damage = Vec::new();
        for key in self.keys()? {
            on_cell(&key);
            let dir = self.cell_dir(&key);
            let m = match Manifest::read(&dir) {
                Ok(m) => m,
                Err(e) => {
                    damage.push(Damage {
                        key: key.clone(),
                        path: MANIFEST.into(),
                        problem: e.to_string(),
                    });
                    continue;
                }
            };
            if m.key != key {
                damage.push(Damage {
                    key: key.clone(),
                    path: MANIFEST.into(),
                    problem: format!("manifest is for key {}", m.key),
                });
            }
            for f in &m.files {
                let p = dir.join(&f.path);
                match hash_file(&p) {
                    Ok((sha, bytes)) if sha == f.sha256 && bytes == f.bytes => {}
                    Ok((sha, bytes)) => damage.push(Damage { key: key.clone(), path: f.path.clone(), problem: format!("content changed: sha256 {sha} ({bytes} bytes), manifest says {} ({} bytes)", f.sha256, f.bytes) }),
                    Err(e) => damage.push(Damage { key: key.clone(), path: f.path.clone(), problem: e.to_string() }),
                }
            }
            for e in walkdir::WalkDir::new(&dir)
                .into_iter()
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_file())
            {
                let rel = e
                    .path()
                    .strip_prefix(&dir)
                    .map(|r| r.to_string_lossy().replace('\\', "/"))
                    .unwrap_or_default();
                if rel != MANIFEST && !m.files.iter().any(|f| f.path == rel) {
                    damage.push(Damage {
                        key: key.clone(),
                        path: rel,
                        problem: "file not in the manifest".into(),
                    });
                }
            }
        }
        Ok(damage)
    }
}

/// SHA-256 and size of a file, streamed.
pub fn hash_file(path: &Path) -> Result<(String, u64), Error> {
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let r = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if r == 0 {
            break;
        }
        h.update(&buf[..r]);
        n += r as u64;
    }
    Ok((hex::encode(h.finalize()), n))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    let mut f = File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(bytes).map_err(|e| Error::io(path, e))?;
    f.sync_all().map_err(|e| Error::io(path, e))
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    write_synced(&tmp, bytes)?;
    fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}
