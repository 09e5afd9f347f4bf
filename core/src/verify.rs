//! `verify`: re-hash the store and read every record; `verify --repair`: move what is damaged
//! into `runs/quarantine/` so the next run recomputes it, touching nothing else.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::Error;
use crate::index;
use crate::live::Gate;
use crate::manifest::{MANIFEST, Manifest};
use crate::store::{Store, hash_file};

/// Where damage was found.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "in", rename_all = "lowercase")]
pub enum Place {
    /// A committed cell; `path` is relative to its directory.
    Cell { key: String },
    /// A run-index file; `path` is relative to `runs/`.
    Index,
    /// A slot pointer (`runs/cells/`); `path` is relative to `runs/`.
    Pointer,
}

/// Something whose bytes no longer match what the store recorded, or cannot be read.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Damage {
    pub place: Place,
    pub path: String,
    pub problem: String,
}

/// What `repair` did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Repair {
    /// (what, where it went).
    pub quarantined: Vec<(String, PathBuf)>,
    /// Damaged cells left in place because a process holds their lock.
    pub busy: Vec<String>,
}

impl Store {
    /// Re-hashes every committed file and reads every index row and slot pointer; reports
    /// whatever changed, vanished or cannot be read. `on_cell` is called per cell.
    pub fn verify(&self, mut on_cell: impl FnMut(&str)) -> Result<Vec<Damage>, Error> {
        let mut damage = Vec::new();
        for key in self.keys()? {
            on_cell(&key);
            self.verify_cell(&key, &mut damage);
        }
        for (dir, ext, place) in [
            ("index", "parquet", Place::Index),
            ("cells", "json", Place::Pointer),
        ] {
            let records = files_in(&self.root().join(dir))?;
            for path in records
                .into_iter()
                .filter(|p| p.extension().is_some_and(|e| e == ext))
            {
                let problem = match place {
                    Place::Index => index::check_file(&path).err(),
                    _ => fs::read(&path)
                        .map_err(|e| e.to_string())
                        .and_then(|b| {
                            serde_json::from_slice::<crate::store::Pointer>(&b)
                                .map(|_| ())
                                .map_err(|e| e.to_string())
                        })
                        .err()
                        .map(|m| Error::corrupt(&path, m)),
                };
                if let Some(e) = problem {
                    damage.push(Damage {
                        place: place.clone(),
                        path: format!("{dir}/{}", file_name(&path)),
                        problem: e.to_string(),
                    });
                }
            }
        }
        Ok(damage)
    }

    fn verify_cell(&self, key: &str, damage: &mut Vec<Damage>) {
        let dir = self.cell_dir(key);
        let mut report = |path: &str, problem: String| {
            damage.push(Damage {
                place: Place::Cell { key: key.into() },
                path: path.into(),
                problem,
            })
        };
        let m = match Manifest::read(&dir) {
            Ok(m) => m,
            Err(e) => return report(MANIFEST, e.to_string()),
        };
        if m.key != key {
            report(MANIFEST, format!("manifest is for key {}", m.key));
        }
        for f in &m.files {
            match hash_file(&dir.join(&f.path)) {
                Ok((sha, bytes)) if sha == f.sha256 && bytes == f.bytes => {}
                Ok((sha, bytes)) => report(
                    &f.path,
                    format!(
                        "content changed: sha256 {sha} ({bytes} bytes), manifest says {} ({} bytes)",
                        f.sha256, f.bytes
                    ),
                ),
                Err(e) => report(&f.path, e.to_string()),
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
                report(&rel, "file not in the manifest".into());
            }
        }
    }

    /// Moves each damaged cell (with its index rows and stat memo) and each unreadable index
    /// row or slot pointer into `runs/quarantine/`, so the next run recomputes those cells.
    /// Runs with the gate closed, so no run resolves a key meanwhile.
    pub fn repair(&self, damage: &[Damage]) -> Result<Repair, Error> {
        let (_gate, _) = Gate::close(self)?;
        let mut out = Repair::default();
        let cells: BTreeSet<&str> = damage
            .iter()
            .filter_map(|d| match &d.place {
                Place::Cell { key } => Some(key.as_str()),
                _ => None,
            })
            .collect();
        let mut moved = BTreeSet::new();
        for key in cells {
            let Some(_lock) = self.try_lock(key)? else {
                out.busy.push(key.to_owned());
                continue;
            };
            moved.insert(key);
            let dir = self.cell_dir(key);
            out.quarantined
                .push((format!("cell {key}"), self.quarantine(&dir)?));
            self.forget_memo(key);
            for row in files_in(&self.index_dir())? {
                if file_name(&row).starts_with(&format!("{key}.")) {
                    out.quarantined.push((
                        format!("index row {}", file_name(&row)),
                        self.quarantine(&row)?,
                    ));
                }
            }
        }
        let rows = index::take_merged_rows(&self.index_dir(), &moved)?;
        if !rows.is_empty() {
            let to = self.quarantine_path("merged-index-rows.parquet");
            index::write_rows(&to, &rows)?;
            out.quarantined
                .push((format!("{} index rows in merged files", rows.len()), to));
        }
        for d in damage
            .iter()
            .filter(|d| matches!(d.place, Place::Index | Place::Pointer))
        {
            let p = self.root().join(&d.path);
            if p.exists() {
                out.quarantined.push((d.path.clone(), self.quarantine(&p)?));
            }
        }
        Ok(out)
    }

    /// Moves `path` to `runs/quarantine/<unix nanos>.<name>`.
    pub(crate) fn quarantine(&self, path: &Path) -> Result<PathBuf, Error> {
        let to = self.quarantine_path(&file_name(path));
        fs::rename(path, &to).map_err(|e| Error::io(path, e))?;
        Ok(to)
    }

    /// `runs/quarantine/<unix nanos>.<name>`: where something named `name` is put aside.
    fn quarantine_path(&self, name: &str) -> PathBuf {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        self.root()
            .join("quarantine")
            .join(format!("{nanos}.{name}"))
    }
}

fn files_in(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|e| Error::io(dir, e))?;
        if e.file_type().is_ok_and(|t| t.is_file()) {
            out.push(e.path());
        }
    }
    out.sort();
    Ok(out)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
