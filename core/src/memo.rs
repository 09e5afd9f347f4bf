//! Checking a committed cell before its files are used: cheaply by a stat memo (size, mtime,
//! ctime, inode as of the last time the file hashed right), by a full re-hash where the stat
//! differs. Any write to a file changes its ctime, which no user can set back.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::error::Error;
use crate::manifest::Manifest;
use crate::store::{Store, hash_file, write_hint};

/// What a file's stat said when its bytes last matched the manifest.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Stamp {
    pub bytes: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    pub ino: u64,
}

impl Stamp {
    pub(crate) fn of(path: &Path) -> io::Result<Stamp> {
        let m = fs::metadata(path)?;
        Ok(Stamp {
            bytes: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
            ino: m.ino(),
        })
    }
}

pub(crate) type Memo = BTreeMap<String, Stamp>;

impl Store {
    fn memo_path(&self, key: &str) -> std::path::PathBuf {
        self.root().join("memo").join(format!("{key}.json"))
    }

    /// Records the stat of every file of a cell just committed (so just hashed), and returns it.
    pub(crate) fn record_memo(&self, m: &Manifest) -> Result<Memo, Error> {
        let dir = self.cell_dir(&m.key);
        let mut memo = Memo::new();
        for f in &m.files {
            let p = dir.join(&f.path);
            memo.insert(f.path.clone(), Stamp::of(&p).map_err(|e| Error::io(&p, e))?);
        }
        self.write_memo(&m.key, &memo)?;
        Ok(memo)
    }

    /// The memo of a cell; empty if it has none or it cannot be read (then files are re-hashed).
    pub(crate) fn memo(&self, key: &str) -> Memo {
        fs::read(self.memo_path(key))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn write_memo(&self, key: &str, memo: &Memo) -> Result<(), Error> {
        let path = self.memo_path(key);
        let json = serde_json::to_vec(memo).map_err(|e| Error::corrupt(&path, e))?;
        // A hint: a memo lost or emptied by a power cut only makes the next check re-hash.
        write_hint(&path, &json)
    }

    /// Drops the memo of a cell leaving the store.
    pub(crate) fn forget_memo(&self, key: &str) {
        let _ = fs::remove_file(self.memo_path(key));
    }

    /// Checks that every file of the committed cell `m` still holds the bytes its manifest
    /// records: a stat per file against the memo, a re-hash of any file whose stat changed
    /// (or that has no memo). [`Error::Damaged`] names the first file that does not match.
    pub fn check(&self, m: &Manifest) -> Result<(), Error> {
        let dir = self.cell_dir(&m.key);
        let memo = self.memo(&m.key);
        let damaged = |path: &Path, problem: String| Error::Damaged {
            key: m.key.clone(),
            label: m.label.clone(),
            path: path.to_owned(),
            problem,
        };
        let mut fresh = Memo::new();
        let mut rehashed = false;
        for f in &m.files {
            let p = dir.join(&f.path);
            let stamp = Stamp::of(&p).map_err(|e| damaged(&p, e.to_string()))?;
            if memo.get(&f.path) == Some(&stamp) {
                fresh.insert(f.path.clone(), stamp);
                continue;
            }
            let (sha, bytes) = hash_file(&p).map_err(|e| damaged(&p, e.to_string()))?;
            if sha != f.sha256 || bytes != f.bytes {
                return Err(damaged(
                    &p,
                    format!(
                        "content changed: sha256 {sha} ({bytes} bytes), manifest says {} ({} bytes)",
                        f.sha256, f.bytes
                    ),
                ));
            }
            // Memoised only if nothing wrote to it while it was hashed.
            if Stamp::of(&p).is_ok_and(|s| s == stamp) {
                fresh.insert(f.path.clone(), stamp);
                rehashed = true;
            }
        }
        if rehashed {
            self.write_memo(&m.key, &fresh)?;
        }
        Ok(())
    }
}
