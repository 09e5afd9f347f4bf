//! Google Cloud Storage on loopback for the remote-cache tests: gcp-storage-emulator (PyPI,
//! installed by `scripts/install-cloud-emulators.sh`), reached the way object_store reaches an
//! emulator: a service-account JSON with `gcs_base_url` and `disable_oauth`.
//!
//! object_store's GCS client speaks only GCS's XML API (listing, HEAD, conditional PUT with
//! `x-goog-if-generation-match: 0`); `start` probes the emulator for each and skips, naming what
//! is missing, rather than test against a server that would make the checks meaningless.

use std::process::Command;

use super::cloud::{self, Cloud, Process};

/// A running GCS emulator.
pub struct GcsServer {
    _process: Process,
    dir: tempfile::TempDir,
    port: u16,
}

const SECRET: &str = "spo-test-secret-do-not-leak-gcs";

impl GcsServer {
    /// Starts the emulator on a free loopback port and checks that it serves what
    /// object_store's GCS client needs, or says why not and returns `None`.
    pub fn start() -> Option<GcsServer> {
        let venv = std::env::var_os("SPO_GCS_VENV")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| cloud::cache("gcs-venv"));
        let Some(exe) = cloud::find(
            "SPO_GCS_EMULATOR",
            &[venv.join("bin/gcp-storage-emulator")],
            "gcp-storage-emulator",
        ) else {
            eprintln!(
                "SKIP: no gcp-storage-emulator (run scripts/install-cloud-emulators.sh, or set SPO_GCS_EMULATOR); the GCS remote-cache test did not run"
            );
            return None;
        };
        let port = cloud::free_port()?;
        let mut c = Command::new(&exe);
        c.args(["start", "--host", "127.0.0.1", "--port", &port.to_string()])
            .arg("--in-memory");
        let process = cloud::start(&exe.display().to_string(), c, port)?;
        let s = GcsServer {
            _process: process,
            dir: tempfile::tempdir().ok()?,
            port,
        };
        let missing = s.missing_features();
        if !missing.is_empty() {
            eprintln!(
                "SKIP: {} lacks what object_store's GCS client needs: {}; the GCS remote-cache test did not run",
                exe.display(),
                missing.join(", ")
            );
            return None;
        }
        Some(s)
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What of GCS's XML API the emulator does not serve, tried on a bucket of its own.
    fn missing_features(&self) -> Vec<&'static str> {
        self.create_bucket("spo-probe");
        let status = |r: Result<ureq::http::Response<ureq::Body>, ureq::Error>| match r {
            Ok(r) => r.status().as_u16(),
            Err(ureq::Error::StatusCode(c)) => c,
            Err(_) => 0,
        };
        let mut missing = Vec::new();
        let list = ureq::get(&format!("{}/spo-probe?list-type=2", self.base())).call();
        if status(list) != 200 {
            missing.push("XML API listing (GET /bucket?list-type=2)");
        }
        let object = format!("{}/spo-probe/o", self.base());
        let put = |body: &str| {
            status(
                ureq::put(&object)
                    .header("x-goog-if-generation-match", "0")
                    .send(body),
            )
        };
        let (first, second) = (put("a"), put("b"));
        if status(ureq::head(&object).call()) != 200 {
            missing.push("HEAD of an object");
        }
        if first != 200 || second != 412 {
            missing.push(
                "put-if-absent (x-goog-if-generation-match: 0; it overwrote an existing object)",
            );
        }
        missing
    }

    /// The service-account file object_store reads (written once, beside nothing secret but
    /// the test's made-up key).
    fn account_file(&self, port: u16) -> String {
        let path = self.dir.path().join(format!("account-{port}.json"));
        let json = serde_json::json!({
            "gcs_base_url": format!("http://127.0.0.1:{port}"),
            "disable_oauth": true,
            "client_email": "spo-test@example.invalid",
            "private_key": SECRET,
            "private_key_id": "spo-test",
        });
        std::fs::write(&path, json.to_string()).unwrap();
        path.display().to_string()
    }
}

impl Cloud for GcsServer {
    fn name(&self) -> &'static str {
        "GCS (gcp-storage-emulator)"
    }

    fn url(&self, bucket: &str, prefix: &str) -> String {
        match prefix {
            "" => format!("gs://{bucket}"),
            p => format!("gs://{bucket}/{p}"),
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![("GOOGLE_SERVICE_ACCOUNT", self.account_file(self.port))]
    }

    fn env_dead(&self, port: u16) -> Vec<(&'static str, String)> {
        vec![("GOOGLE_SERVICE_ACCOUNT", self.account_file(port))]
    }

    fn create_bucket(&self, bucket: &str) {
        ureq::post(&format!("{}/storage/v1/b?project=spo", self.base()))
            .header("content-type", "application/json")
            .send(serde_json::json!({ "name": bucket }).to_string())
            .unwrap();
    }

    fn no_bucket(&self) -> &'static str {
        "404"
    }

    /// The emulator checks no credentials (`disable_oauth`).
    fn refused(&self) -> Option<(Vec<(&'static str, String)>, &'static str)> {
        None
    }

    fn secret(&self) -> String {
        SECRET.into()
    }
}
