//! Helpers shared by the binary's integration tests: a project directory with a pipeline.toml,
//! and the spo-pipe binary run inside it.
#![allow(dead_code)] // each test binary uses its own subset

pub mod azure;
pub mod browser;
pub mod cloud;
pub mod gcs;
pub mod s3;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_spo-pipe"));
    c.env_remove("RUST_LOG");
    // Tests that check the report `run` ends with remove this.
    c.env("SPO_PIPE_REPORT", "0");
    c
}

/// spo-pipe on the repository's default pipeline.toml with its store at `store`, each of `sets`
/// given as `--set`, then `args`.
pub fn default_pipeline(store: &Path, sets: &[&str], args: &[&str]) -> Command {
    let mut c = bin();
    c.arg("--pipeline")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/pipeline.toml"))
        .arg("--store")
        .arg(store)
        .args(args);
    for s in sets {
        c.arg("--set").arg(s);
    }
    c
}

pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    pub fn new(pipeline: &str) -> Project {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pipeline.toml"), pipeline).unwrap();
        Project { dir }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn run(&self, args: &[&str]) -> Output {
        bin().args(args).current_dir(self.path()).output().unwrap()
    }
    /// Starts spo-pipe in the background, output discarded.
    pub fn spawn(&self, args: &[&str]) -> Child {
        bin()
            .args(args)
            .current_dir(self.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
    pub fn committed(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.path().join("runs/store"))
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }
    /// Live processes started by a stage of this project (found by their `SPO_SCRATCH`).
    pub fn stage_processes(&self) -> Vec<u32> {
        let needle = format!("SPO_SCRATCH={}", self.path().display());
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let zombie = stat
                    .rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'));
                let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
                !zombie
                    && env
                        .split(|&b| b == 0)
                        .any(|v| String::from_utf8_lossy(v).starts_with(&needle))
            })
            .collect()
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Waits (up to 30 s) until `path` exists.
pub fn wait_for(path: &Path) {
    let t0 = Instant::now();
    while !path.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every file under `dir` with its size and modification time.
pub fn snapshot(dir: &Path) -> Vec<(String, u64, std::time::SystemTime)> {
    let mut v: Vec<_> = walk(dir)
        .into_iter()
        .map(|p| {
            let m = std::fs::metadata(&p).unwrap();
            (p.display().to_string(), m.len(), m.modified().unwrap())
        })
        .collect();
    v.sort();
    v
}

pub fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![dir.to_owned()];
    if dir.is_dir() {
        for e in std::fs::read_dir(dir).unwrap() {
            out.extend(walk(&e.unwrap().path()));
        }
    }
    out
}

/// A child process killed when the test ends, however it ends.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The entries of two snapshots that differ (for a short assertion message).
pub fn changed<T: PartialEq + Clone>(a: &[T], b: &[T]) -> Vec<T> {
    a.iter()
        .filter(|x| !b.contains(x))
        .chain(b.iter().filter(|x| !a.contains(x)))
        .cloned()
        .collect()
}
