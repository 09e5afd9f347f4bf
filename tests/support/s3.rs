//! An S3 server on loopback for the remote-cache tests: moto's server (installed by
//! `scripts/install-s3.sh`).

use std::process::Command;

use super::cloud::{self, Cloud, Process};

/// A running moto S3 server.
pub struct S3Server {
    _process: Process,
    pub port: u16,
}

const SECRET: &str = "spo-test-secret-do-not-leak";

impl S3Server {
    /// Starts moto's server on a free loopback port, or says why it cannot and returns `None`
    /// (the caller then skips).
    pub fn start() -> Option<S3Server> {
        let venv = std::env::var_os("SPO_S3_VENV")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| cloud::cache("s3-venv"));
        let Some(exe) = cloud::find(
            "SPO_MOTO_SERVER",
            &[venv.join("bin/moto_server")],
            "moto_server",
        ) else {
            eprintln!(
                "SKIP: no moto_server (run scripts/install-s3.sh, or set SPO_MOTO_SERVER); the remote-cache test did not run"
            );
            return None;
        };
        let port = cloud::free_port()?;
        let mut c = Command::new(&exe);
        c.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        let process = cloud::start(&exe.display().to_string(), c, port)?;
        Some(S3Server {
            _process: process,
            port,
        })
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn api(&self, path: &str) -> String {
        format!("{}/{}", self.endpoint(), path.trim_start_matches('/'))
    }
}

impl Cloud for S3Server {
    fn name(&self) -> &'static str {
        "S3 (moto)"
    }

    fn url(&self, bucket: &str, prefix: &str) -> String {
        match prefix {
            "" => format!("s3://{bucket}"),
            p => format!("s3://{bucket}/{p}"),
        }
    }

    /// Dummy credentials: moto checks no signature unless told to ([`Cloud::refused`]).
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", "spo-test-key".into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET.into()),
            ("AWS_DEFAULT_REGION", "us-east-1".into()),
        ]
    }

    fn env_dead(&self, port: u16) -> Vec<(&'static str, String)> {
        let mut env = self.env();
        env[0].1 = format!("http://127.0.0.1:{port}");
        env
    }

    fn create_bucket(&self, bucket: &str) {
        ureq::put(&self.api(bucket)).send_empty().unwrap();
    }

    fn no_bucket(&self) -> &'static str {
        "NoSuchBucket"
    }

    /// From now on the server checks every request's credentials (moto's `reset-auth`): the
    /// test's made-up keys are refused with 403.
    fn refused(&self) -> Option<(Vec<(&'static str, String)>, &'static str)> {
        ureq::post(&self.api("moto-api/reset-auth"))
            .header("content-type", "application/octet-stream")
            .send("0")
            .unwrap();
        Some((self.env(), "403"))
    }

    fn secret(&self) -> String {
        SECRET.into()
    }
}
