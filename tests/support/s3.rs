//! An S3 server on loopback for the remote-cache tests: moto's server (installed by
//! `scripts/install-s3.sh`), started on a free port by the test itself and killed when dropped.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running moto S3 server.
pub struct S3Server {
    child: Child,
    pub port: u16,
}

/// Where `moto_server` is: `$SPO_MOTO_SERVER`, the venv `scripts/install-s3.sh` makes, or PATH.
fn moto_server() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SPO_MOTO_SERVER") {
        return Some(PathBuf::from(p));
    }
    let venv = std::env::var_os("SPO_S3_VENV")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/spo-pipe/s3-venv"))
        });
    if let Some(v) = venv {
        let p = v.join("bin/moto_server");
        if p.is_file() {
            return Some(p);
        }
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("moto_server"))
            .find(|p| p.is_file())
    })
}

impl S3Server {
    /// Starts moto's server on a free loopback port, or says why it cannot and returns `None`
    /// (the caller then skips).
    pub fn start() -> Option<S3Server> {
        let Some(exe) = moto_server() else {
            eprintln!(
                "SKIP: no moto_server (run scripts/install-s3.sh, or set SPO_MOTO_SERVER); the remote-cache test did not run"
            );
            return None;
        };
        let port = match TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
            Ok(a) => a.port(),
            Err(e) => {
                eprintln!("SKIP: no free loopback port ({e}); the remote-cache test did not run");
                return None;
            }
        };
        let child = match Command::new(&exe)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!(
                    "SKIP: cannot start {} ({e}); the remote-cache test did not run",
                    exe.display()
                );
                return None;
            }
        };
        let mut server = S3Server { child, port };
        let t0 = Instant::now();
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(server);
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                eprintln!(
                    "SKIP: {} exited ({status}) before it listened; the remote-cache test did not run",
                    exe.display()
                );
                return None;
            }
            if t0.elapsed() > Duration::from_secs(60) {
                eprintln!(
                    "SKIP: {} did not listen on port {port} within 60 s; the remote-cache test did not run",
                    exe.display()
                );
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment spo-pipe needs to reach this server (dummy credentials).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", "spo-test-key".into()),
            (
                "AWS_SECRET_ACCESS_KEY",
                "spo-test-secret-do-not-leak".into(),
            ),
            ("AWS_DEFAULT_REGION", "us-east-1".into()),
        ]
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{}", self.endpoint(), path.trim_start_matches('/'))
    }

    /// Creates a bucket (moto checks no signature unless told to).
    pub fn create_bucket(&self, bucket: &str) {
        ureq::put(&self.url(bucket)).send_empty().unwrap();
    }

    /// Signed direct access to `bucket` (objects read, written, listed past spo-pipe).
    pub fn bucket(&self, bucket: &str) -> spo_remote::Remote {
        let env = self.env();
        let settings: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        spo_remote::Remote::open_with(&format!("s3://{bucket}"), &settings).unwrap()
    }

    /// From now on the server checks every request's credentials (moto's `reset-auth`): the
    /// test's made-up keys are refused with 403.
    pub fn require_auth(&self) {
        ureq::post(&self.url("moto-api/reset-auth"))
            .header("content-type", "application/octet-stream")
            .send("0")
            .unwrap();
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
