//! `download`: fetch a file from a URL or a local path, verified against a pinned SHA-256.
//!
//! HTTP downloads go to `<scratch>/<file>.part` and resume with a `Range` request after an
//! interruption. The digest is computed while the bytes arrive (the part already on disk is
//! hashed once on resume); a mismatch is an error, the part is deleted, and nothing is stored.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::Result;
use sha2::{Digest, Sha256};
use spo_core::{ParamSpec, StageContext, StageError, StageKind};

spo_core::stage_params! {
    /// The params of `download`.
    pub struct DownloadParams {
        /// http(s):// URL, file:// URL or local path
        url: String = string("").required(),
        /// the expected SHA-256 of the file, 64 hex digits
        sha256: String = string("").required(),
        /// name of the stored file (default: the URL's last path segment)
        filename: String = string(""),
    }
}

/// The `download` stage kind.
pub struct Download;

impl StageKind for Download {
    fn name(&self) -> &'static str {
        "download"
    }
    fn version(&self) -> u32 {
        1
    }
    fn summary(&self) -> &'static str {
        "fetch a URL or local file, verified against a pinned sha256; resumable"
    }
    fn params(&self) -> Vec<ParamSpec> {
        DownloadParams::specs()
    }
    fn run(&self, cx: &mut StageContext) -> Result<(), StageError> {
        let p = DownloadParams::from_params(cx.params())?;
        let want = expected_digest(&p.sha256)?;
        let name = file_name(&p.filename, &p.url)?;
        let url = p.url;
        let part = cx.scratch_dir().join(format!("{name}.part"));
        let (got, bytes) = match local_path(&url) {
            Some(path) => copy_hashing(&path, &part)?,
            None => match fetch_resumable(&url, None, &part, cx)? {
                Fetched::Whole { sha256, bytes } => (sha256, bytes),
                Fetched::Refused(status) => {
                    return Err(StageError::Failed(format!("GET {url}: HTTP {status}")));
                }
            },
        };
        if got != want {
            let _ = fs::remove_file(&part);
            return Err(StageError::Failed(format!(
                "sha256 mismatch for {url}: expected {want}, got {got} ({bytes} bytes); nothing was stored (check the pinned sha256, or whether the file changed upstream)"
            )));
        }
        cx.adopt(&name, &part, &got, bytes)?;
        cx.metric("bytes", bytes as f64);
        Ok(())
    }
}

/// `sha256` as a pinned digest (trimmed, lower case), or the text it was if it is not 64 hex
/// digits.
pub(crate) fn pinned_digest(sha256: &str) -> Result<String, String> {
    let s = sha256.trim().to_ascii_lowercase();
    if s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(s)
    } else {
        Err(s)
    }
}

fn expected_digest(sha256: &str) -> Result<String> {
    pinned_digest(sha256)
        .map_err(|s| StageError::param("sha256", format!("`{s}` is not 64 hex digits")).into())
}

fn file_name(given: &str, url: &str) -> Result<String> {
    let name = if given.is_empty() {
        url.split(['?', '#'])
            .next()
            .unwrap_or(url)
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or_default()
    } else {
        given
    };
    if name.is_empty() || name.contains(['/', '\\']) || name == ".." || name == "." {
        return Err(StageError::param(
            "filename",
            format!("cannot store `{url}` under the name `{name}`; set `filename`"),
        )
        .into());
    }
    Ok(name.to_owned())
}

fn local_path(url: &str) -> Option<PathBuf> {
    if let Some(p) = url.strip_prefix("file://") {
        return Some(PathBuf::from(p));
    }
    (!url.starts_with("http://") && !url.starts_with("https://")).then(|| PathBuf::from(url))
}

pub(crate) fn copy_hashing(src: &Path, dst: &Path) -> Result<(String, u64)> {
    let mut input = File::open(src).map_err(|e| StageError::io(src, e))?;
    let mut out = File::create(dst).map_err(|e| StageError::io(dst, e))?;
    let mut h = Sha256::new();
    let n = pump(&mut input, &mut out, &mut h, dst, &|_| {})?;
    out.sync_all().map_err(|e| StageError::io(dst, e))?;
    Ok((hex::encode(h.finalize()), n))
}

fn pump(
    input: &mut dyn Read,
    out: &mut File,
    h: &mut Sha256,
    dst: &Path,
    progress: &dyn Fn(u64),
) -> Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let r = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(StageError::io(dst, e).into()),
        };
        out.write_all(&buf[..r])
            .map_err(|e| StageError::io(dst, e))?;
        h.update(&buf[..r]);
        n += r as u64;
        progress(r as u64);
    }
    Ok(n)
}

/// What a resumable fetch ended with.
pub(crate) enum Fetched {
    /// The whole file is in the part file, with its digest.
    Whole { sha256: String, bytes: u64 },
    /// The server answered with this status instead of the file (the part is untouched).
    Refused(u16),
}

/// Fetches `url` into `part`, resuming what an interrupted attempt left there; `token` is sent
/// as a bearer token.
pub(crate) fn fetch_resumable(
    url: &str,
    token: Option<&str>,
    part: &Path,
    cx: &StageContext,
) -> Result<Fetched> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_body(Some(Duration::from_secs(120)))
        .http_status_as_error(false)
        .build()
        .into();
    // Hash what an interrupted attempt left, then ask for the rest.
    let mut h = Sha256::new();
    let mut have = 0u64;
    if part.exists() {
        let mut f = File::open(part).map_err(|e| StageError::io(part, e))?;
        have = io::copy(&mut f, &mut HashSink(&mut h)).map_err(|e| StageError::io(part, e))?;
    }
    let mut req = agent.get(url);
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    if have > 0 {
        req = req.header("Range", format!("bytes={have}-"));
    }
    let resp = req
        .call()
        .map_err(|e| StageError::Failed(format!("GET {url}: {e}")))?;
    let status = resp.status().as_u16();
    let append = match status {
        206 if have > 0 => true,
        200 => false,
        // The part is already the whole file.
        416 if have > 0 => {
            return Ok(Fetched::Whole {
                sha256: hex::encode(h.finalize()),
                bytes: have,
            });
        }
        s => return Ok(Fetched::Refused(s)),
    };
    if !append {
        h = Sha256::new();
        have = 0;
    }
    let total = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|n| n + have);
    let mut out = OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(part)
        .map_err(|e| StageError::io(part, e))?;
    let pb = cx.progress(total.unwrap_or(0), "download");
    pb.set_position(have);
    let mut body = resp.into_body();
    let mut reader = body.as_reader();
    let got = pump(&mut reader, &mut out, &mut h, part, &|n| pb.inc(n));
    pb.finish_and_clear();
    let got = got.map_err(|e| {
        StageError::Failed(format!(
            "GET {url}: interrupted after {} bytes ({e}); rerun to resume",
            have + fs::metadata(part)
                .map_or(0, |m| m.len())
                .saturating_sub(have)
        ))
    })?;
    out.sync_all().map_err(|e| StageError::io(part, e))?;
    if let Some(t) = total
        && have + got != t
    {
        return Err(StageError::Failed(format!(
            "GET {url}: got {} of {t} bytes; rerun to resume",
            have + got
        ))
        .into());
    }
    Ok(Fetched::Whole {
        sha256: hex::encode(h.finalize()),
        bytes: have + got,
    })
}

/// A writer that only hashes.
struct HashSink<'a>(&'a mut Sha256);

impl Write for HashSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
