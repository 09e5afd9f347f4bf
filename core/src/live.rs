//! Live runs, and the gate between them and what removes cells (`gc`, `verify --repair`).
//!
//! Each run keeps `runs/live/<run>.keys`, locked by it for its lifetime, and appends to it every
//! key it resolves (the inputs it will read and the outputs it commits) before checking the
//! store for that key. Both happen under a shared lock on `runs/locks/gc.lock`; a remover holds
//! it exclusively while it reads the live files and removes cells. So a key is either recorded
//! before the remover looks (and kept), or checked after the remover is done (and, if removed,
//! recomputed): a run never finds a cell and then loses it. A killed run's file is unlocked and
//! is dropped by the next remover.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::Error;
use crate::store::{Committed, Store};

/// A run in progress: the keys it protects stay in the store until it ends (is dropped or dies).
#[derive(Debug)]
pub struct LiveRun {
    path: PathBuf,
    registry: File,
    gate: Gate,
}

impl LiveRun {
    /// Registers a new run of this process.
    pub fn start(store: &Store) -> Result<LiveRun, Error> {
        let gate = Gate::open(store)?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = store
            .root()
            .join("live")
            .join(format!("{}.{nanos}.keys", std::process::id()));
        // Created and locked under the gate, so a remover never takes it for a dead run's.
        let registry = gate.shared(|| {
            let f = fs::OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&path)
                .map_err(|e| Error::io(&path, e))?;
            f.lock().map_err(|e| Error::io(&path, e))?;
            Ok(f)
        })?;
        Ok(LiveRun {
            path,
            registry,
            gate,
        })
    }

    /// Records `keys` as protected by this run (one write, one hold of the gate), then
    /// resolves each that is committed.
    pub(crate) fn protect(
        &self,
        store: &Store,
        keys: &[&str],
    ) -> Result<Vec<Result<Option<Committed>, Error>>, Error> {
        let mut lines = String::with_capacity(keys.len() * 65);
        for k in keys {
            lines.push_str(k);
            lines.push('\n');
        }
        self.gate.shared(|| {
            (&self.registry)
                .write_all(lines.as_bytes())
                .map_err(|e| Error::io(&self.path, e))?;
            Ok(keys.iter().map(|k| store.committed_cell(k)).collect())
        })
    }
}

/// How many runs are live on `store` now (their registry files are locked). Takes only a shared
/// lock on a file no live run holds, which no run ever waits for.
pub fn live_runs(store: &Store) -> Result<usize, Error> {
    Ok(registries(store)?
        .iter()
        .filter(|(_, f)| matches!(f.try_lock_shared(), Err(fs::TryLockError::WouldBlock)))
        .count())
}

/// Every run's registry file, opened (those removed meanwhile are skipped).
fn registries(store: &Store) -> Result<Vec<(PathBuf, File)>, Error> {
    let dir = store.root().join("live");
    let mut out = Vec::new();
    for entry in fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
        let path = entry.map_err(|e| Error::io(&dir, e))?.path();
        match File::open(&path) {
            Ok(f) => out.push((path, f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&path, e)),
        }
    }
    Ok(out)
}

impl Drop for LiveRun {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// `runs/locks/gc.lock`.
#[derive(Debug)]
pub(crate) struct Gate {
    file: File,
    path: PathBuf,
}

impl Gate {
    fn open(store: &Store) -> Result<Gate, Error> {
        let path = store.root().join("locks").join("gc.lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok(Gate { file, path })
    }

    /// Runs `f` holding the gate shared (as runs do to resolve a key).
    fn shared<T>(&self, f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
        let gate_err = |e| Error::io(&self.path, e);
        self.file.lock_shared().map_err(gate_err)?;
        let r = f();
        self.file.unlock().map_err(gate_err)?;
        r
    }

    /// Closes the gate for a remover (held until dropped) and returns every key a live run
    /// protects; files of dead runs are removed.
    pub(crate) fn close(store: &Store) -> Result<(Gate, BTreeSet<String>), Error> {
        let gate = Gate::open(store)?;
        gate.file.lock().map_err(|e| Error::io(&gate.path, e))?;
        let mut keys = BTreeSet::new();
        for (path, f) in registries(store)? {
            match f.try_lock_shared() {
                Ok(()) => {
                    // Its run is gone.
                    let _ = fs::remove_file(&path);
                }
                Err(fs::TryLockError::WouldBlock) => {
                    let text = fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
                    keys.extend(text.lines().map(str::to_owned));
                }
                Err(fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
            }
        }
        Ok((gate, keys))
    }
}
