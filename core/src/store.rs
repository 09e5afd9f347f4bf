//! The content-addressed store under `runs/`.
//!
//! ```text
//! runs/store/<key>/      committed cells: their files and manifest.json (never modified)
//! runs/staging/<key>.*   one private directory per attempt; swept when its owner is gone
//! runs/scratch/<key>/    checkpoints of an unfinished cell, removed when it commits
//! runs/locks/<key>.lock  OS file locks: one computation of a key at a time, across processes
//! runs/locks/<key>.lease the key's lease while it is computed: host, pid, heartbeat (lease.rs)
//! runs/locks/gc.lock     the gate between runs resolving keys and `gc` / `verify --repair`
//! runs/live/<run>.keys   each live run's protected keys (its inputs and outputs), locked by it
//! runs/memo/<key>.json   size, mtime, ctime and inode of each file when it last hashed right
//! runs/quarantine/       damaged cells and unreadable records moved aside by `verify --repair`
//! runs/cells/<slot>.json the key parts of the last committed run in each slot (for `why`)
//! runs/index/*.parquet  the run index: a file per new row, merged into one (index.rs)
//! runs/cache/*.cells     the cell cache: each cell's stage, digest and memo (cache.rs)
//! ```
//! The contract is in the types: [`Store::lookup`] protects keys and says which are committed,
//! [`Store::claim`] answers a missing one with a [`Lookup::Hit`] or a [`Lookup::Miss`] holding
//! the key's [`CellLock`], and only a `CellLock` can commit (the
//! commit fsyncs every file and directory, whatever wrote them, and sets their modes). A killed
//! or failed attempt commits nothing; locks are released by the OS when their holders die.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::cache::Cache;
pub use crate::cell_lock::CellLock;
pub use crate::committed::Committed;
use crate::error::Error;
use crate::key::CellKey;
use crate::lease::{self, Lease};
use crate::live::{Gate, LiveRun};
use crate::manifest::{MANIFEST, Manifest};

/// A store rooted at a `runs/` directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    /// The cell cache, shared by every clone.
    cache: Arc<Cache>,
}

/// What the store holds for a key.
#[derive(Debug)]
pub enum Lookup {
    /// Committed.
    Hit(Committed),
    /// Not committed, and this process now holds the key's lock: compute it and commit.
    Miss(CellLock),
}

/// The last committed run of a cell: its key and the parts of that key.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Pointer {
    pub key: String,
    pub label: String,
    pub parts: CellKey,
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

const DIRS: [&str; 10] = [
    "store",
    "staging",
    "scratch",
    "locks",
    "live",
    "memo",
    "quarantine",
    "cells",
    "index",
    "cache",
];

impl Store {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store, Error> {
        let root = root.into();
        for d in DIRS {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(|e| Error::io(&p, e))?;
        }
        let cache = Arc::new(Cache::new(root.join("cache")));
        Ok(Store { root, cache })
    }

    pub(crate) fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Loads what resolving cells reads first (the cell cache) on another thread while `f`
    /// runs, and returns `f`'s result: a run, `status` and `gc` build their plan meanwhile
    /// (at 200k cells the two take about as long as each other).
    pub fn warm_while<T>(&self, f: impl FnOnce() -> T) -> T {
        std::thread::scope(|s| {
            s.spawn(|| self.cache.load());
            f()
        })
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

    /// The manifest of a committed key, or `None` if it is not committed. Reading only: a
    /// run asks [`Store::lookup`], which also protects the key from `gc`.
    pub fn committed(&self, key: &str) -> Result<Option<Manifest>, Error> {
        let dir = self.cell_dir(key);
        match fs::metadata(dir.join(MANIFEST)) {
            Ok(_) => Manifest::read(&dir).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(&dir, e)),
        }
    }

    /// Resolves `keys` for `run`: protects them from `gc` until the run ends (recorded
    /// together), then answers for each whether it is committed ([`Store::committed_cell`]).
    /// A key found missing is claimed with [`Store::claim`].
    pub fn lookup(
        &self,
        run: &LiveRun,
        keys: &[&str],
    ) -> Result<Vec<Result<Option<Committed>, Error>>, Error> {
        run.protect(self, keys)
    }

    /// Takes the lock of `key` (which [`Store::lookup`] protected and found missing) ‒ calling
    /// `on_wait` first if another process holds it (computing it, or a survivor of an earlier
    /// run still holding it) ‒ and answers again: a [`Lookup::Hit`] if the holder committed it,
    /// else a [`Lookup::Miss`].
    ///
    /// Two guards, in this order: the key's OS lock (`flock`; it dies with its holder and every
    /// process holding a handle on it, on this machine), then the key's lease
    /// (`locks/<key>.lease`, [`Lease`]), which excludes other machines sharing the store even
    /// where the file system does not carry OS locks between them (docs/architecture.md).
    pub fn claim(&self, key: &str, on_wait: impl FnOnce()) -> Result<Lookup, Error> {
        let mut on_wait = Some(on_wait);
        let file = self.lock_file(key)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                if let Some(f) = on_wait.take() {
                    f();
                }
                file.lock()
                    .map_err(|e| Error::io(&self.lock_path(key), e))?;
            }
            Err(fs::TryLockError::Error(e)) => return Err(Error::io(&self.lock_path(key), e)),
        }
        // Committed meanwhile (by the holder we waited for)? Then no lease is needed.
        if let Some(c) = self.committed_cell(key)? {
            return Ok(Lookup::Hit(c));
        }
        let lease = Lease::acquire(&self.lease_path(key), &mut |holder| {
            tracing::info!("{key}: waiting for the lease held by {holder}");
            if let Some(f) = on_wait.take() {
                f();
            }
        })?;
        // The lease's holder may have committed it meanwhile.
        match self.committed_cell(key)? {
            Some(c) => Ok(Lookup::Hit(c)),
            None => Ok(Lookup::Miss(CellLock::new(self.clone(), key, file, lease)?)),
        }
    }

    /// `runs/locks/<key>.lease`.
    pub(crate) fn lease_path(&self, key: &str) -> PathBuf {
        self.root.join("locks").join(format!("{key}.lease"))
    }

    pub(crate) fn lock_path(&self, key: &str) -> PathBuf {
        self.root.join("locks").join(format!("{key}.lock"))
    }

    pub(crate) fn lock_file(&self, key: &str) -> Result<File, Error> {
        let p = self.lock_path(key);
        fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(|e| Error::io(&p, e))
    }

    /// The lock on `key` if no process holds it: neither its OS lock nor, by another machine,
    /// its lease ([`lease::busy`]).
    pub(crate) fn try_lock(&self, key: &str) -> Result<Option<File>, Error> {
        let f = self.lock_file(key)?;
        match f.try_lock() {
            Ok(()) if lease::busy(&self.lease_path(key)) => Ok(None),
            Ok(()) => Ok(Some(f)),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(Error::io(&self.lock_path(key), e)),
        }
    }

    /// A fresh staging directory for one attempt at `key` (hold its lock).
    pub(crate) fn new_staging(&self, key: &str) -> Result<PathBuf, Error> {
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

    /// Keys being computed now: those with a staging directory made by a process that is still
    /// alive (read from names and `/proc`; no lock is taken, so no run is disturbed).
    pub fn computing(&self) -> Result<BTreeSet<String>, Error> {
        let dir = self.root.join("staging");
        let mut keys = BTreeSet::new();
        for entry in fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let name = entry.map_err(|e| Error::io(&dir, e))?.file_name();
            let mut parts = name.to_str().unwrap_or_default().split('.');
            if let (Some(key), Some(pid)) = (parts.next(), parts.next())
                && Path::new("/proc").join(pid).exists()
            {
                keys.insert(key.to_owned());
            }
        }
        Ok(keys)
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

    /// Removes a committed cell (under its lock, so a process computing it is not hurt; and
    /// under the closed gate, whose caller has checked that no live run protects it).
    pub(crate) fn remove(&self, _gate: &Gate, key: &str) -> Result<bool, Error> {
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
        self.forget_memo(key);
        let scratch = self.scratch_dir(key);
        if scratch.exists() {
            fs::remove_dir_all(&scratch).map_err(|e| Error::io(&scratch, e))?;
        }
        Ok(true)
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

pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    let mut f = File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(bytes).map_err(|e| Error::io(path, e))?;
    f.sync_all().map_err(|e| Error::io(path, e))
}

/// Writes `bytes` to `path` through a temporary file (fsynced) and a rename.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    write_renamed(path, bytes, true)
}

/// [`write_atomic`] without the fsync: for a record whose loss (or emptiness after a power cut)
/// costs only time, like a stat memo.
pub(crate) fn write_hint(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    write_renamed(path, bytes, false)
}

fn write_renamed(path: &Path, bytes: &[u8], sync: bool) -> Result<(), Error> {
    // Unique per process and call, so two threads writing one path never share a temp file.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp.{}.{n}", std::process::id()));
    if sync {
        write_synced(&tmp, bytes)?;
    } else {
        fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    }
    fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}
