//! The site in memory: pages and content-addressed assets, written out as a whole.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The file that marks a directory as a report, so `--out` never replaces anything else.
pub const MARKER: &str = ".spo-pipe-report";

/// Every file of the site, by path relative to its root.
#[derive(Debug, Default, Clone)]
pub struct Site {
    files: BTreeMap<String, Vec<u8>>,
}

impl Site {
    /// Adds a page (or any file) at `path`.
    pub fn put(&mut self, path: impl Into<String>, bytes: impl Into<Vec<u8>>) {
        self.files.insert(path.into(), bytes.into());
    }

    /// Adds `bytes` as an asset named by its content; returns its path from the site's root.
    pub fn asset(&mut self, bytes: &[u8], ext: &str) -> String {
        let digest = hex::encode(Sha256::digest(bytes));
        let path = format!("assets/{}.{ext}", &digest[..20]);
        self.files
            .entry(path.clone())
            .or_insert_with(|| bytes.to_vec());
        path
    }

    pub fn get(&self, path: &str) -> Option<&[u8]> {
        self.files.get(path).map(Vec::as_slice)
    }

    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }

    /// Writes the site to `out`, replacing a previous report there: it is built beside `out`
    /// and renamed into place. A non-empty `out` without the report marker is refused.
    pub fn write(&self, out: &Path) -> Result<()> {
        if out.exists() && !is_report(out)? {
            return Err(Error::NotAReport(out.to_owned()));
        }
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
        let name = out
            .file_name()
            .map_or_else(|| "report".to_owned(), |n| n.to_string_lossy().into_owned());
        let tmp = parent.join(format!(".{name}.{}.tmp", std::process::id()));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        let written = self.write_into(&tmp).and_then(|()| {
            if out.exists() {
                fs::remove_dir_all(out).map_err(|e| Error::io(out, e))?;
            }
            fs::rename(&tmp, out).map_err(|e| Error::io(out, e))
        });
        if written.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        written
    }

    fn write_into(&self, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        fs::write(
            dir.join(MARKER),
            b"written by spo-pipe report; replaced by the next one\n",
        )
        .map_err(|e| Error::io(dir.join(MARKER), e))?;
        for (path, bytes) in &self.files {
            let p = dir.join(path);
            if let Some(d) = p.parent() {
                fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
            }
            fs::write(&p, bytes).map_err(|e| Error::io(&p, e))?;
        }
        Ok(())
    }
}

/// Whether `dir` is empty or holds a previous report.
fn is_report(dir: &Path) -> Result<bool> {
    if !dir.is_dir() {
        return Ok(false);
    }
    if dir.join(MARKER).is_file() {
        return Ok(true);
    }
    let mut entries = fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    Ok(entries.next().is_none())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_are_named_by_content_and_stored_once() {
        let mut s = Site::default();
        let a = s.asset(b"one", "png");
        assert_eq!(a, s.asset(b"one", "png"));
        assert_ne!(a, s.asset(b"two", "png"));
        assert_eq!(s.paths().count(), 2);
    }

    #[test]
    fn a_directory_that_is_not_a_report_is_never_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("mine");
        fs::create_dir(&out).unwrap();
        fs::write(out.join("thesis.tex"), "precious").unwrap();
        let mut s = Site::default();
        s.put("index.html", "x");
        assert!(matches!(s.write(&out), Err(Error::NotAReport(_))));
        assert_eq!(
            fs::read_to_string(out.join("thesis.tex")).unwrap(),
            "precious"
        );
    }

    #[test]
    fn a_report_replaces_the_previous_one_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("report");
        let mut s = Site::default();
        s.put("old.html", "old");
        s.write(&out).unwrap();
        let mut t = Site::default();
        t.put("index.html", "new");
        t.write(&out).unwrap();
        assert!(!out.join("old.html").exists());
        assert_eq!(fs::read_to_string(out.join("index.html")).unwrap(), "new");
        assert_eq!(
            fs::read_dir(tmp.path()).unwrap().count(),
            1,
            "no temporary left"
        );
    }
}
