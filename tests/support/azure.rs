//! Azure Blob Storage on loopback for the remote-cache tests: Azurite, Microsoft's own emulator
//! (npm's `azurite`, installed by `scripts/install-cloud-emulators.sh`), with an account of
//! the test's own whose key Azurite checks on every request (Shared Key signatures).

use std::process::Command;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use super::cloud::{self, Cloud, Process};

const ACCOUNT: &str = "spotest";

/// A running Azurite blob service.
pub struct AzureServer {
    _process: Process,
    _dir: tempfile::TempDir,
    port: u16,
}

/// The account key: base64, as Azure's are.
fn key(raw: &str) -> String {
    B64.encode(raw)
}

impl AzureServer {
    /// Starts Azurite's blob service on a free loopback port (telemetry off, in memory), or
    /// says why it cannot and returns `None`.
    pub fn start() -> Option<AzureServer> {
        let Some(exe) = cloud::find(
            "SPO_AZURITE",
            &[cloud::cache("azurite/node_modules/.bin/azurite-blob")],
            "azurite-blob",
        ) else {
            eprintln!(
                "SKIP: no azurite-blob (run scripts/install-cloud-emulators.sh, or set SPO_AZURITE); the Azure remote-cache test did not run"
            );
            return None;
        };
        let port = cloud::free_port()?;
        let dir = tempfile::tempdir().ok()?;
        let mut c = Command::new(&exe);
        c.args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .args(["--inMemoryPersistence", "--disableTelemetry"])
            .current_dir(dir.path())
            .env(
                "AZURITE_ACCOUNTS",
                format!("{ACCOUNT}:{}", key(&Self::raw_secret())),
            );
        let process = cloud::start(&exe.display().to_string(), c, port)?;
        Some(AzureServer {
            _process: process,
            _dir: dir,
            port,
        })
    }

    fn raw_secret() -> String {
        "spo-test-secret-do-not-leak-azure".into()
    }

    /// Creates a container: the one request made past object_store, signed here with the
    /// account's Shared Key.
    fn create_container_signed(&self, container: &str) {
        let date = http_date(std::time::SystemTime::now());
        let version = "2021-08-06";
        let to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{ACCOUNT}/{ACCOUNT}/{container}\nrestype:container"
        );
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, Self::raw_secret().as_bytes());
        let sig = B64.encode(ring::hmac::sign(&k, to_sign.as_bytes()).as_ref());
        ureq::put(&format!(
            "{}/{container}?restype=container",
            self.endpoint(self.port)
        ))
        .header("x-ms-date", &date)
        .header("x-ms-version", version)
        .header("Authorization", &format!("SharedKey {ACCOUNT}:{sig}"))
        .send_empty()
        .unwrap();
    }

    /// The account's blob endpoint, path-style as Azurite serves it.
    fn endpoint(&self, port: u16) -> String {
        format!("http://127.0.0.1:{port}/{ACCOUNT}")
    }
}

impl Cloud for AzureServer {
    fn name(&self) -> &'static str {
        "Azure (Azurite)"
    }

    fn url(&self, container: &str, prefix: &str) -> String {
        match prefix {
            "" => format!("az://{container}"),
            p => format!("az://{container}/{p}"),
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AZURE_STORAGE_ENDPOINT", self.endpoint(self.port)),
            ("AZURE_STORAGE_ACCOUNT_NAME", ACCOUNT.into()),
            ("AZURE_STORAGE_ACCOUNT_KEY", self.secret()),
        ]
    }

    fn env_dead(&self, port: u16) -> Vec<(&'static str, String)> {
        let mut env = self.env();
        env[0].1 = self.endpoint(port);
        env
    }

    fn create_bucket(&self, bucket: &str) {
        self.create_container_signed(bucket);
    }

    fn no_bucket(&self) -> &'static str {
        "ContainerNotFound"
    }

    fn refused(&self) -> Option<(Vec<(&'static str, String)>, &'static str)> {
        let mut env = self.env();
        env[2].1 = key("not-the-account-key");
        Some((env, "403"))
    }

    fn secret(&self) -> String {
        key(&Self::raw_secret())
    }
}

/// `t` as HTTP writes dates (`Mon, 07 Dec 2026 07:05:14 GMT`).
fn http_date(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86400) as i64, secs % 86400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let wd = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    let mon = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(m - 1) as usize];
    format!(
        "{wd}, {d:02} {mon} {y} {:02}:{:02}:{:02} GMT",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
