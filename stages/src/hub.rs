//! `hub`: files of a Hugging Face repository at a pinned commit, each verified against its own
//! pinned SHA-256, fetched through the `download` kind's resumable transfer.
//!
//! The files are listed in the stage, so the cell's key is fixed before anything is fetched and
//! a changed upstream file is an error, never a silent change. They are stored at their paths in
//! the repository (`unet/config.json`), so the cell is a folder laid out like the repo.
//! `HF_ENDPOINT` (a mirror; default `https://huggingface.co`) and `HF_TOKEN` (for gated or
//! private repos) are read as `huggingface_hub` reads them; neither enters the key, since the
//! digests pin the bytes. With `local`, the same files come from a local copy of the repo (a
//! diffusers folder on disk, a hub-cache snapshot) and are checked against the same digests.

use std::fs;
use std::path::Path;

use spo_core::{ParamSpec, StageContext, StageError, StageKind};

use crate::download::{Fetched, copy_hashing, fetch_resumable, pinned_digest};
use crate::error::Result;

spo_core::param_choice! {
    /// What kind of repository.
    pub enum RepoType {
        Model = "model",
        Dataset = "dataset",
    }
}

spo_core::stage_params! {
    /// The params of `hub`.
    pub struct HubParams {
        /// the repository, `owner/name`
        repo: String = string("").required(),
        /// the commit to fetch: 40 hex digits (a branch or tag could move)
        revision: String = string("").required(),
        /// the files to fetch, as paths in the repository
        files: Vec<String> = str_list(&[]),
        /// the SHA-256 of each file, in the order of `files`
        sha256: Vec<String> = str_list(&[]),
        /// a model or a dataset repository
        repo_type: RepoType = choice_of(RepoType::Model),
        /// a local copy of the repo at `revision` (a diffusers folder, a hub-cache snapshot): the
        /// files are copied from it, not fetched, and checked against the same digests
        local: String = string(""),
    }
}

/// The `hub` stage kind.
pub struct Hub;

impl StageKind for Hub {
    fn name(&self) -> &'static str {
        "hub"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "fetch files of a Hugging Face repo at a pinned commit, each verified against its sha256; resumable; HF_ENDPOINT, HF_TOKEN"
    }
    fn params(&self) -> Vec<ParamSpec> {
        HubParams::specs()
    }
    fn run(&self, cx: &mut StageContext) -> Result<(), StageError> {
        let p = HubParams::from_params(cx.params())?;
        let files = checked(&p)?;
        let endpoint = std::env::var("HF_ENDPOINT")
            .ok()
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "https://huggingface.co".to_owned());
        let token = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty());
        let prefix = match p.repo_type {
            RepoType::Model => String::new(),
            RepoType::Dataset => "datasets/".to_owned(),
        };
        let mut total = 0;
        for (i, (file, want)) in files.iter().enumerate() {
            let url = format!(
                "{}/{prefix}{}/resolve/{}/{file}",
                endpoint.trim_end_matches('/'),
                p.repo,
                p.revision
            );
            let part = cx.scratch_dir().join(format!("{i}.part"));
            let fetched = if p.local.is_empty() {
                fetch_resumable(&url, token.as_deref(), &part, cx)?
            } else {
                let src = Path::new(&p.local).join(file);
                if !src.is_file() {
                    return Err(StageError::Failed(format!(
                        "{}@{}: {file}: not in the local copy `{}`; nothing was stored",
                        p.repo, p.revision, p.local
                    )));
                }
                let (sha256, bytes) = copy_hashing(&src, &part)?;
                Fetched::Whole { sha256, bytes }
            };
            let (got, bytes) = match fetched {
                Fetched::Whole { sha256, bytes } => (sha256, bytes),
                Fetched::Refused(status) => {
                    return Err(refused(
                        status,
                        &p.repo,
                        &p.revision,
                        file,
                        &url,
                        token.is_some(),
                    ));
                }
            };
            if got != *want {
                let _ = fs::remove_file(&part);
                return Err(StageError::Failed(format!(
                    "{}@{}: {file}: sha256 mismatch: expected {want}, got {got} ({bytes} bytes); \
                     nothing was stored (is the pinned digest the file's at this revision?)",
                    p.repo, p.revision
                )));
            }
            cx.adopt(file, &part, &got, bytes)?;
            total += bytes;
        }
        cx.metric("bytes", total as f64);
        cx.metric("files", files.len() as f64);
        Ok(())
    }
}

/// The (path, digest) pairs, each checked: a pinned commit, safe relative paths, 64-hex digests.
pub fn checked(p: &HubParams) -> Result<Vec<(String, String)>, StageError> {
    let parts: Vec<&str> = p.repo.split('/').collect();
    if parts.len() != 2 || parts.iter().any(|s| s.is_empty() || *s == "..") {
        return Err(StageError::param(
            "repo",
            format!("`{}` is not `owner/name`", p.repo),
        ));
    }
    if p.revision.len() != 40 || !p.revision.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(StageError::param(
            "revision",
            format!(
                "`{}` is not a commit (40 hex digits): a branch or tag can move, so the key would not pin the files",
                p.revision
            ),
        ));
    }
    if p.files.is_empty() {
        return Err(StageError::param("files", "no files listed"));
    }
    if p.files.len() != p.sha256.len() {
        return Err(StageError::param(
            "sha256",
            format!(
                "{} digests for {} files: give one per file, in the same order",
                p.sha256.len(),
                p.files.len()
            ),
        ));
    }
    let mut out: Vec<(String, String)> = Vec::new();
    for (f, d) in p.files.iter().zip(&p.sha256) {
        let unsafe_path = f.is_empty()
            || f.starts_with('/')
            || f.contains('\\')
            || f.split('/').any(|s| s.is_empty() || s == "." || s == "..");
        if unsafe_path {
            return Err(StageError::param(
                "files",
                format!("`{f}` is not a relative path inside the repository"),
            ));
        }
        if f == spo_core::manifest::MANIFEST {
            return Err(StageError::param(
                "files",
                format!("`{f}` would clash with the cell's own manifest"),
            ));
        }
        if out.iter().any(|(g, _)| g == f) {
            return Err(StageError::param("files", format!("`{f}` is listed twice")));
        }
        let d = pinned_digest(d).map_err(|d| {
            StageError::param(
                "sha256",
                format!("the digest of `{f}`, `{d}`, is not 64 hex digits"),
            )
        })?;
        out.push((f.clone(), d));
    }
    Ok(out)
}

/// The error for a file the hub would not give.
fn refused(status: u16, repo: &str, rev: &str, file: &str, url: &str, token: bool) -> StageError {
    StageError::Failed(match status {
        401 | 403 if token => format!(
            "{repo}: HTTP {status} for {file}: the token in HF_TOKEN has no access to this repo \
             (accept its terms on the hub, or use a token of an account that has)"
        ),
        401 | 403 => format!(
            "{repo}: HTTP {status} for {file}: the repo is gated or private; set HF_TOKEN to a \
             token with access"
        ),
        404 => format!(
            "{repo}@{rev}: no file `{file}` ({url} answered 404): check the repo, the revision and the path"
        ),
        s => format!("{repo}: GET {url}: HTTP {s}"),
    })
}
