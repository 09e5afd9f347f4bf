//! Resolving a committed cell through the cell cache (`cache.rs`): a stat of its manifest when
//! the cache holds it, its manifest and memo read (and its entry recorded) when it does not.

use std::io;

use crate::cache::Entry;
use crate::error::Error;
use crate::manifest::{MANIFEST, Manifest};
use crate::memo::{Memo, Stamp};
use crate::store::Store;

/// A committed cell as runs and `status` resolve it: enough to key the cells that read it and
/// to check its files. The whole manifest is read ([`Store::committed`]) only where needed.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    pub key: String,
    pub stage: String,
    /// The content digest of its files.
    pub digest: String,
    /// Each file with its stat when its bytes last matched; None where the memo lacks a file.
    files: Option<Vec<(String, Stamp)>>,
}

impl Store {
    /// What the store holds for `key`, as [`Store::committed`] would say it, from the cache
    /// where the cached entry still matches the manifest's stat.
    pub fn committed_cell(&self, key: &str) -> Result<Option<Committed>, Error> {
        let mpath = self.cell_dir(key).join(MANIFEST);
        let stamp = match Stamp::of(&mpath) {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&mpath, e)),
        };
        if let Some(e) = self.cache().get(key)
            && e.manifest == stamp
        {
            return Ok(Some(Committed {
                key: key.to_owned(),
                stage: e.stage,
                digest: e.digest,
                files: Some(e.files),
            }));
        }
        Ok(self.read_cell(key, stamp)?.map(|(_, c)| c))
    }

    /// Checks that every file of `c` still holds the bytes its manifest records, as
    /// [`Store::check`] does: a stat per file, the manifest read and the file re-hashed only
    /// where the stat differs from the memo.
    pub fn check_committed(&self, c: &Committed) -> Result<(), Error> {
        let dir = self.cell_dir(&c.key);
        if let Some(files) = &c.files
            && files
                .iter()
                .all(|(p, s)| Stamp::of(&dir.join(p)).is_ok_and(|now| now == *s))
        {
            return Ok(());
        }
        let mpath = dir.join(MANIFEST);
        let stamp = Stamp::of(&mpath).map_err(|e| Error::io(&mpath, e))?;
        let m = Manifest::read(&dir)?;
        self.check(&m)?;
        self.remember(&m, stamp, &self.memo(&c.key));
        Ok(())
    }

    /// Reads the manifest of `key`, whose stat (taken before reading it) was `stamp`, and its
    /// memo; records the cache entry they make.
    fn read_cell(&self, key: &str, stamp: Stamp) -> Result<Option<(Manifest, Committed)>, Error> {
        let Some(m) = self.committed(key)? else {
            return Ok(None);
        };
        let c = self.remember(&m, stamp, &self.memo(key));
        Ok(Some((m, c)))
    }

    /// The cell `m` with the memo `memo`; recorded in the cache when the memo covers every file.
    /// `stamp` is the manifest's stat from before `m` was read, so a manifest changed since
    /// leaves an entry that no longer matches.
    pub(crate) fn remember(&self, m: &Manifest, stamp: Stamp, memo: &Memo) -> Committed {
        let files: Option<Vec<(String, Stamp)>> = m
            .files
            .iter()
            .map(|f| memo.get(&f.path).map(|s| (f.path.clone(), s.clone())))
            .collect();
        if let Some(files) = &files {
            self.cache().record(
                &m.key,
                &Entry {
                    manifest: stamp,
                    stage: m.stage.clone(),
                    digest: m.digest.clone(),
                    files: files.clone(),
                },
            );
        }
        Committed {
            key: m.key.clone(),
            stage: m.stage.clone(),
            digest: m.digest.clone(),
            files,
        }
    }
}

impl Committed {
    /// The key's full manifest, read from the store.
    pub fn manifest(&self, store: &Store) -> Result<Manifest, Error> {
        Manifest::read(&store.cell_dir(&self.key))
    }
}
