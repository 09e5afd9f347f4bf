//! Garbage collection: drop what no target reaches and no live run protects.

use std::collections::BTreeSet;

use crate::error::Error;
use crate::explain::resolve;
use crate::live::Gate;
use crate::plan::Plan;
use crate::registry::Registry;
use crate::store::Store;

/// What `gc` removes (or would remove).
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct GcReport {
    /// (key, label, bytes) of each committed cell no target reaches.
    pub cells: Vec<(String, String, u64)>,
    /// Scratch directories of keys no target reaches.
    pub scratch: Vec<String>,
    /// Cells kept because a live run protects them (it reads them or committed them) or
    /// another process holds their lock.
    pub busy: Vec<String>,
    /// Run-index files merged into one (none in a dry run).
    pub index_files_merged: usize,
}

/// Removes (unless `dry_run`) every committed cell and scratch directory whose key is not the
/// current key of some cell of `plan` and that no live run protects, then merges the run
/// index and the cell cache. While it removes, runs wait to resolve keys (the gate, `live.rs`).
pub fn gc(
    registry: &Registry,
    store: &Store,
    plan: &Plan,
    dry_run: bool,
) -> Result<GcReport, Error> {
    let keep: BTreeSet<String> = resolve(registry, store, plan)?
        .into_iter()
        .filter_map(|r| r.key)
        .collect();
    let (gate, protected) = Gate::close(store)?;
    let mut report = GcReport::default();
    for key in store.keys()? {
        if keep.contains(&key) {
            continue;
        }
        if protected.contains(&key) {
            report.busy.push(key);
            continue;
        }
        let label = crate::manifest::Manifest::read(&store.cell_dir(&key))
            .map(|m| m.label)
            .unwrap_or_else(|_| "?".into());
        let bytes = store.size(&key);
        if dry_run || store.remove(&gate, &key)? {
            report.cells.push((key, label, bytes));
        } else {
            report.busy.push(key);
        }
    }
    let scratch_root = store.root().join("scratch");
    for e in std::fs::read_dir(&scratch_root).map_err(|e| Error::io(&scratch_root, e))? {
        let e = e.map_err(|e| Error::io(&scratch_root, e))?;
        let key = e.file_name().to_string_lossy().into_owned();
        if keep.contains(&key) || protected.contains(&key) {
            continue;
        }
        if !dry_run {
            let Some(_lock) = store.try_lock(&key)? else {
                continue;
            };
            std::fs::remove_dir_all(e.path()).map_err(|err| Error::io(&e.path(), err))?;
        }
        report.scratch.push(key);
    }
    // Runs need not wait for the merge.
    drop(gate);
    if !dry_run {
        report.index_files_merged = crate::index::compact(&store.index_dir())?;
        store.cache().merge(&store.root().join("store"))?;
    }
    Ok(report)
}
