//! The object stores the remote-cache tests run against: real servers on loopback, each
//! started by the test on a free port and killed when dropped (S3: moto; Azure Blob Storage:
//! Azurite; Google Cloud Storage: gcp-storage-emulator), installed by
//! `scripts/install-s3.sh` and `scripts/install-cloud-emulators.sh`. Where one cannot start,
//! `start` says why (`SKIP: …`) and the test returns.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What the tests need of a server, whatever its protocol.
pub trait Cloud {
    /// For messages: `S3 (moto)`.
    fn name(&self) -> &'static str;
    /// The remote URL of `prefix` in `bucket` (`s3://bucket/prefix`; no prefix: the bucket).
    fn url(&self, bucket: &str, prefix: &str) -> String;
    /// The environment spo-pipe needs to reach this server.
    fn env(&self) -> Vec<(&'static str, String)>;
    /// [`Cloud::env`] with the endpoint moved to `port`, where nothing listens.
    fn env_dead(&self, port: u16) -> Vec<(&'static str, String)>;
    fn create_bucket(&self, bucket: &str);
    /// What the server's answer to a request on a missing bucket contains (`NoSuchBucket`).
    fn no_bucket(&self) -> &'static str;
    /// An environment whose credentials the server refuses from now on, and what its refusal
    /// contains; `None` where the server checks no credentials.
    fn refused(&self) -> Option<(Vec<(&'static str, String)>, &'static str)>;
    /// The credential in [`Cloud::env`] that must never appear in output or in the store.
    fn secret(&self) -> String;

    /// Direct access to `bucket` (objects read, written, listed past spo-pipe).
    fn bucket(&self, bucket: &str) -> spo_remote::Remote {
        let env = self.env();
        let settings: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        spo_remote::Remote::open_with(&self.url(bucket, ""), &settings).unwrap()
    }
}

/// A server process, killed when dropped, and the file its stderr goes to.
pub struct Process(Child, tempfile::NamedTempFile);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The program `name`: `$var`, else the first of `installed` that exists, else on PATH.
pub fn find(var: &str, installed: &[PathBuf], name: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        return Some(PathBuf::from(p));
    }
    if let Some(p) = installed.iter().find(|p| p.is_file()) {
        return Some(p.clone());
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// `~/.cache/spo-pipe/<rel>`.
pub fn cache(rel: &str) -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default()
        .join(".cache/spo-pipe")
        .join(rel)
}

/// A free loopback port.
pub fn free_port() -> Option<u16> {
    match TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(a) => Some(a.port()),
        Err(e) => {
            eprintln!("SKIP: no free loopback port ({e}); the remote-cache test did not run");
            None
        }
    }
}

/// Starts `cmd` and waits (up to 60 s) until it listens on `port`, or says why not.
pub fn start(what: &str, mut cmd: Command, port: u16) -> Option<Process> {
    let log = tempfile::NamedTempFile::new().ok()?;
    let child = match cmd
        .stdin(Stdio::null())
        .stdout(log.reopen().ok()?)
        .stderr(log.reopen().ok()?)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("SKIP: cannot start {what} ({e}); the remote-cache test did not run");
            return None;
        }
    };
    let mut p = Process(child, log);
    let t0 = Instant::now();
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(p);
        }
        if let Ok(Some(status)) = p.0.try_wait() {
            let said = std::fs::read_to_string(p.1.path()).unwrap_or_default();
            eprintln!(
                "SKIP: {what} exited ({status}) before it listened ({}); the remote-cache test did not run",
                said.trim().lines().last().unwrap_or("it said nothing")
            );
            return None;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            eprintln!(
                "SKIP: {what} did not listen on port {port} within 60 s; the remote-cache test did not run"
            );
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
