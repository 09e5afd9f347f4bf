//! Which object store a remote URL names, set up from the environment: S3 (and S3-compatible
//! servers), Google Cloud Storage, Azure Blob Storage, or a directory.
//!
//! Credentials come only from the environment (or the settings a caller passes), read by
//! `object_store`'s builders; a URL that carries one (a password, a SAS token in its query) is
//! refused, so no credential can reach a message or the store through the URL.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, ObjectStoreScheme, RetryConfig};
use spo_core::remote::{RemoteError, RemoteFailure};

use crate::chain;

/// The URL forms accepted, for messages.
pub const FORMS: &str = "s3://bucket/prefix, gs://bucket/prefix, az://container/prefix (or azure://, abfs[s]://container@account.dfs.core.windows.net/prefix, https://account.blob.core.windows.net/container/prefix), file:///dir";

/// An opened object store, the prefix under it, and what to tell someone it refuses.
pub struct Backend {
    pub objects: Arc<dyn ObjectStore>,
    pub prefix: String,
    /// The environment variables this backend reads, for "cannot use" messages.
    pub hint: &'static str,
}

fn unavailable(message: String) -> RemoteError {
    RemoteError {
        failure: RemoteFailure::Unavailable,
        message,
    }
}

/// `url` without anything after `?` or `#` and without a password: what a message may show.
pub fn redacted(url: &str) -> String {
    let cut = url.find(['?', '#']).map_or(url, |i| &url[..i]);
    match url::Url::parse(cut) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(None);
            u.to_string()
        }
        _ => cut.to_owned(),
    }
}

/// Opens the store `url` names (already trimmed of a trailing `/`). `settings` (environment
/// variable names and values) take precedence over the environment's.
pub fn open(url: &str, settings: &[(&str, &str)]) -> Result<Backend, RemoteError> {
    // object_store's HTTP client uses rustls without a default crypto provider: ring here.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let setting = |name: &str| {
        settings
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
            .or_else(|| std::env::var(name).ok())
    };
    if let Some(dir) = url.strip_prefix("file://") {
        if dir.is_empty() {
            return Err(unavailable(format!("remote `{url}` names no directory")));
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| unavailable(format!("remote `{url}`: cannot create {dir}: {e}")))?;
        let fs = LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| unavailable(format!("remote `{url}`: {}", chain(&e))))?;
        return Ok(Backend {
            objects: Arc::new(fs),
            prefix: String::new(),
            hint: "",
        });
    }
    let shown = redacted(url);
    let parsed = url::Url::parse(url).map_err(|e| {
        unavailable(format!(
            "remote `{shown}` is not a URL ({e}); use one of {FORMS}"
        ))
    })?;
    if parsed.password().is_some() || parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(unavailable(format!(
            "remote `{shown}`: the URL carries a password or a query (a SAS token?); give credentials in the environment instead (AWS_*, GOOGLE_*, AZURE_STORAGE_*), never in the URL"
        )));
    }
    let (scheme, path) = match ObjectStoreScheme::parse(&parsed) {
        Ok((
            s @ (ObjectStoreScheme::AmazonS3
            | ObjectStoreScheme::GoogleCloudStorage
            | ObjectStoreScheme::MicrosoftAzure),
            p,
        )) => (s, p),
        _ => {
            return Err(unavailable(format!(
                "remote `{shown}`: unsupported scheme or no bucket; use one of {FORMS}"
            )));
        }
    };
    let retry = RetryConfig {
        backoff: BackoffConfig::default(),
        max_retries: 3,
        retry_timeout: Duration::from_secs(60),
    };
    let client = |http: bool| {
        ClientOptions::new()
            .with_connect_timeout(Duration::from_secs(10))
            .with_allow_http(http)
    };
    let built = |e: object_store::Error, what: &str| {
        unavailable(format!(
            "remote `{shown}`: cannot set up {what}: {}",
            chain(&e)
        ))
    };
    let (objects, hint): (Arc<dyn ObjectStore>, &'static str) = match scheme {
        ObjectStoreScheme::AmazonS3 => {
            let mut b = AmazonS3Builder::from_env();
            for (k, v) in settings {
                if let Ok(key) = k.to_ascii_lowercase().parse() {
                    b = b.with_config(key, *v);
                }
            }
            // awscli's name for a custom endpoint, where object_store's is not set. An
            // endpoint given as http:// is meant (a server on loopback or a LAN).
            let endpoint = setting("AWS_ENDPOINT").or_else(|| setting("AWS_ENDPOINT_URL"));
            let http = endpoint.as_ref().is_some_and(|e| e.starts_with("http://"));
            if let Some(ep) = endpoint {
                b = b.with_endpoint(ep);
            }
            let s3 = b
                .with_url(url)
                .with_retry(retry)
                .with_client_options(client(http))
                .build()
                .map_err(|e| built(e, "S3"))?;
            (
                Arc::new(s3),
                "S3 reads AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION and AWS_ENDPOINT or AWS_ENDPOINT_URL",
            )
        }
        ObjectStoreScheme::GoogleCloudStorage => {
            let mut b = GoogleCloudStorageBuilder::from_env();
            for (k, v) in settings {
                if let Ok(key) = k.to_ascii_lowercase().parse() {
                    b = b.with_config(key, *v);
                }
            }
            let http = gcs_base_url(&setting).is_some_and(|u| u.starts_with("http://"));
            let gcs = b
                .with_url(url)
                .with_retry(retry)
                .with_client_options(client(http))
                .build()
                .map_err(|e| built(e, "Google Cloud Storage"))?;
            (
                Arc::new(gcs),
                "GCS reads GOOGLE_APPLICATION_CREDENTIALS or GOOGLE_SERVICE_ACCOUNT (a service-account JSON file; its gcs_base_url for an emulator), GOOGLE_SERVICE_ACCOUNT_KEY, or the instance's metadata server",
            )
        }
        _ => {
            let mut b = MicrosoftAzureBuilder::from_env();
            for (k, v) in settings {
                if let Ok(key) = k.to_ascii_lowercase().parse() {
                    b = b.with_config(key, *v);
                }
            }
            let http = setting("AZURE_STORAGE_ENDPOINT")
                .or_else(|| setting("AZURE_ENDPOINT"))
                .is_some_and(|e| e.starts_with("http://"));
            let az = b
                .with_url(url)
                .with_retry(retry)
                .with_client_options(client(http))
                .build()
                .map_err(|e| built(e, "Azure Blob Storage"))?;
            (
                Arc::new(az),
                "Azure reads AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY, AZURE_STORAGE_SAS_TOKEN or a service principal (AZURE_CLIENT_ID, AZURE_CLIENT_SECRET, AZURE_TENANT_ID), AZURE_STORAGE_ENDPOINT, or AZURE_STORAGE_USE_EMULATOR for Azurite",
            )
        }
    };
    Ok(Backend {
        objects,
        prefix: path.as_ref().to_owned(),
        hint,
    })
}

/// The GCS base URL the builder will use where one is set: `GOOGLE_BASE_URL`, or the
/// `gcs_base_url` of the service-account JSON it reads (how emulators are reached).
fn gcs_base_url(setting: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    if let Some(u) = setting("GOOGLE_BASE_URL") {
        return Some(u);
    }
    let json = match setting("GOOGLE_SERVICE_ACCOUNT_KEY") {
        Some(k) => k,
        None => {
            let path = [
                "GOOGLE_SERVICE_ACCOUNT",
                "GOOGLE_SERVICE_ACCOUNT_PATH",
                "SERVICE_ACCOUNT",
            ]
            .iter()
            .find_map(|n| setting(n))?;
            std::fs::read_to_string(path).ok()?
        }
    };
    let v: serde_json::Value = serde_json::from_str(&json).ok()?;
    v.get("gcs_base_url")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_with_credentials_are_refused_without_showing_them() {
        for url in [
            "https://acct.blob.core.windows.net/c/p?sv=2020&sig=SECRETSIG",
            "az://c/p?sig=SECRETSIG",
            "s3://user:SECRETSIG@bucket/p",
        ] {
            let e = open(url, &[]).err().expect(url).message;
            assert!(!e.contains("SECRETSIG"), "{e}");
            assert!(e.contains("never in the URL"), "{e}");
        }
    }

    #[test]
    fn each_scheme_opens_with_its_prefix_and_others_are_refused() {
        let gcs_key = r#"{"gcs_base_url": "http://127.0.0.1:1", "disable_oauth": true, "client_email": "", "private_key": "", "private_key_id": ""}"#;
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            (
                "s3://b/team/cache",
                &[("AWS_ACCESS_KEY_ID", "k"), ("AWS_SECRET_ACCESS_KEY", "s")],
                "team/cache",
            ),
            (
                "gs://b/team/cache",
                &[("GOOGLE_SERVICE_ACCOUNT_KEY", gcs_key)],
                "team/cache",
            ),
            (
                "az://c/team",
                &[("AZURE_STORAGE_USE_EMULATOR", "true")],
                "team",
            ),
            ("azure://c", &[("AZURE_STORAGE_USE_EMULATOR", "true")], ""),
            (
                "abfss://c@acct.dfs.core.windows.net/x/y",
                &[("AZURE_STORAGE_ACCOUNT_KEY", "a2V5")],
                "x/y",
            ),
            (
                "https://acct.blob.core.windows.net/c/x",
                &[("AZURE_STORAGE_ACCOUNT_KEY", "a2V5")],
                "x",
            ),
        ];
        for (url, settings, prefix) in cases {
            let b = open(url, settings).unwrap_or_else(|e| panic!("{url}: {}", e.message));
            assert_eq!(b.prefix, *prefix, "{url}");
        }
        for url in [
            "ftp://x/y",
            "https://example.org/x",
            "gs:///nobucket",
            "memory:///",
        ] {
            let e = open(url, &[]).err().expect(url).message;
            assert!(e.contains("use one of"), "{url}: {e}");
        }
    }
}
