//! `spo-pipe pin`: a `hub` stage, every file pinned by its SHA-256, written from a local copy
//! of a repo at one commit (e.g. `huggingface-cli download --revision <commit>`'s snapshot
//! folder, whose symlinks into the blob cache are followed). The stage is checked as `hub`
//! checks it before it is printed.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use anyhow::Context;
use sha2::{Digest, Sha256};
use spo_stages::hub::{HubParams, RepoType, checked};

use crate::UsageError;

/// What to pin.
pub struct PinArgs<'a> {
    pub dir: &'a Path,
    pub repo: &'a str,
    pub revision: &'a str,
    pub name: &'a str,
    pub exclude: &'a [String],
    pub dataset: bool,
    /// Read the files from `dir` when the stage runs (`local`), not from the hub.
    pub local: bool,
}

fn sha256_of(path: &Path) -> anyhow::Result<String> {
    let mut file = File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// The repo paths of the files under `dir`, sorted; hidden entries (`.git`, `.cache`) and paths
/// containing one of `exclude` left out.
fn files(dir: &Path, exclude: &[String]) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let walk = walkdir::WalkDir::new(dir)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.'));
    for entry in walk {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        if !entry.file_type().is_file() {
            continue;
        }
        let rel = entry
            .path()
            .strip_prefix(dir)
            .with_context(|| format!("{} is outside {}", entry.path().display(), dir.display()))?;
        let rel = rel
            .to_str()
            .ok_or_else(|| UsageError(format!("{}: not a UTF-8 path", rel.display())))?
            .replace('\\', "/");
        if !exclude.iter().any(|x| rel.contains(x.as_str())) {
            out.push(rel);
        }
    }
    Ok(out)
}

/// `s` as a TOML basic string, escaped as TOML escapes.
fn quoted(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn toml_list(items: &[String]) -> String {
    let lines: Vec<String> = items
        .iter()
        .map(|s| format!("  {},\n", quoted(s)))
        .collect();
    format!("[\n{}]", lines.concat())
}

/// The `[stage.NAME]` table pinning the files of `a.dir`.
pub fn stage_toml(a: &PinArgs) -> anyhow::Result<String> {
    if !a.dir.is_dir() {
        return Err(UsageError(format!("{}: not a folder", a.dir.display())).into());
    }
    let files = files(a.dir, a.exclude)?;
    if files.is_empty() {
        return Err(UsageError(format!("{}: no files to pin", a.dir.display())).into());
    }
    let sha256 = files
        .iter()
        .map(|f| sha256_of(&a.dir.join(f)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let params = HubParams {
        repo: a.repo.to_owned(),
        revision: a.revision.to_owned(),
        files: files.clone(),
        sha256: sha256.clone(),
        repo_type: if a.dataset {
            RepoType::Dataset
        } else {
            RepoType::Model
        },
        local: String::new(),
    };
    checked(&params).map_err(|e| UsageError(e.to_string()))?;
    let repo_type = if a.dataset {
        "repo_type = \"dataset\"\n"
    } else {
        ""
    };
    let local = if a.local {
        let dir =
            std::path::absolute(a.dir).with_context(|| format!("resolving {}", a.dir.display()))?;
        let dir = dir
            .to_str()
            .ok_or_else(|| UsageError(format!("{}: not a UTF-8 path", dir.display())))?
            .to_owned();
        format!("local = {}\n", quoted(&dir))
    } else {
        String::new()
    };
    Ok(format!(
        "[stage.{}]\nkind = \"hub\"\n[stage.{}.params]\nrepo = {}\nrevision = {}\n{repo_type}{local}files = {}\nsha256 = {}\n",
        a.name,
        a.name,
        quoted(a.repo),
        quoted(a.revision),
        toml_list(&files),
        toml_list(&sha256),
    ))
}
