//! The remote cache end to end: `push`, `pull` and `run` with `[cache] remote`, against real
//! object stores on loopback, each test once per backend (`s3::…` against moto, `azure::…`
//! against Azurite, `gcs::…` against gcp-storage-emulator; each server started by the test and
//! skipped with a message where it cannot start or lacks what the test needs), and against a
//! directory remote (always).

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use support::azure::AzureServer;
use support::cloud::Cloud;
use support::gcs::GcsServer;
use support::s3::S3Server;
use support::{Project, bin, text};

/// Three `gen` cells of random bytes (so a cell computed here can never equal one fetched), each
/// read by a `post` cell that writes a metric; a table over them.
const PIPE: &str = r#"
[stage.gen]
kind = "command"
params = { cmd = "mkdir -p $SPO_OUT/sub && head -c 150000 /dev/urandom > $SPO_OUT/sub/r.bin && echo 0 > $SPO_OUT/n.txt" }
[stage.post]
kind = "command"
needs = ["gen"]
params = { cmd = "cat $SPO_INPUT_GEN/sub/r.bin $SPO_INPUT_GEN/n.txt > $SPO_OUT/both.bin && echo \"{\\\"v\\\": $(cat $SPO_INPUT_GEN/n.txt)}\" > $SPO_OUT/metrics.json" }
[sweep.many]
stage = "gen"
grid = { cmd = ["mkdir -p $SPO_OUT/sub && head -c 150000 /dev/urandom > $SPO_OUT/sub/r.bin && echo 1 > $SPO_OUT/n.txt", "mkdir -p $SPO_OUT/sub && head -c 150000 /dev/urandom > $SPO_OUT/sub/r.bin && echo 2 > $SPO_OUT/n.txt", "mkdir -p $SPO_OUT/sub && head -c 150000 /dev/urandom > $SPO_OUT/sub/r.bin && echo 3 > $SPO_OUT/n.txt"] }
[table.t]
sweep = "many"
stage = "post"
metrics = ["v"]
"#;

/// spo-pipe in `p` with the server's environment (if any); its output holds no credential.
fn spo(p: &Project, cloud: Option<&dyn Cloud>, args: &[&str]) -> Output {
    spo_env(p, cloud, cloud.map(|c| c.env()).unwrap_or_default(), args)
}

/// spo-pipe in `p` with `env`; its output holds none of `cloud`'s credentials.
fn spo_env(
    p: &Project,
    cloud: Option<&dyn Cloud>,
    env: Vec<(&'static str, String)>,
    args: &[&str],
) -> Output {
    let mut c: Command = bin();
    c.args(args).current_dir(p.path()).envs(env);
    let out = c.output().unwrap();
    if let Some(secret) = cloud.map(|c| c.secret()) {
        assert!(
            !text(&out.stderr).contains(&secret) && !text(&out.stdout).contains(&secret),
            "a credential in the output of {args:?}"
        );
    }
    out
}

fn ok(out: &Output) -> String {
    let e = text(&out.stderr);
    assert!(out.status.success(), "{e}{}", text(&out.stdout));
    e
}

/// Every file of every committed cell (manifests included), by path under runs/store.
fn store_files(p: &Project) -> BTreeMap<String, Vec<u8>> {
    let root = p.path().join("runs/store");
    support::walk(&root)
        .into_iter()
        .filter(|f| f.is_file())
        .map(|f| {
            let rel = f.strip_prefix(&root).unwrap().display().to_string();
            (rel, std::fs::read(&f).unwrap())
        })
        .collect()
}

/// The two stores hold the same files with the same bytes (the differing paths, if not).
fn assert_same_stores(a: &Project, b: &Project) {
    let (fa, fb) = (store_files(a), store_files(b));
    let differ: Vec<String> = fa
        .keys()
        .chain(fb.keys())
        .filter(|k| fa.get(*k) != fb.get(*k))
        .map(|k| match (fa.get(k), fb.get(k)) {
            (Some(x), Some(y)) if k.ends_with(".json") => {
                format!("{k}:\n{}\nvs\n{}", text(x), text(y))
            }
            (x, y) => format!("{k} ({:?} vs {:?} bytes)", x.map(Vec::len), y.map(Vec::len)),
        })
        .collect();
    assert!(
        differ.is_empty(),
        "the stores differ:\n{}",
        differ.join("\n")
    );
}

/// No credential of `cloud`'s anywhere under `dir`.
fn assert_no_secret(dir: &Path, cloud: &dyn Cloud) {
    let secret = cloud.secret();
    for f in support::walk(dir) {
        if f.is_file() {
            let b = std::fs::read(&f).unwrap();
            assert!(
                !b.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} holds the secret key",
                f.display()
            );
        }
    }
}

fn staging_is_empty(p: &Project) -> bool {
    std::fs::read_dir(p.path().join("runs/staging"))
        .map(|mut d| d.next().is_none())
        .unwrap_or(true)
}

/// A project that ran the sweep and pushed it to `remote`.
fn pushed(cloud: Option<&dyn Cloud>, remote: &str) -> Project {
    let a = Project::new(PIPE);
    let e = ok(&spo(&a, cloud, &["run", "many"]));
    assert!(e.contains("6 cells: 6 ran"), "{e}");
    let e = ok(&spo(&a, cloud, &["push", "many", "--remote", remote]));
    assert!(
        e.contains("pushed 6 cells (12 blobs") && e.contains(", 0 already there"),
        "{e}"
    );
    a
}

/// Push, then pull into a fresh store: every file and manifest identical, `verify` clean, the
/// same table, and a run there computes nothing.
fn push_then_pull(cloud: Option<&dyn Cloud>, remote: &str) {
    let a = pushed(cloud, remote);
    // A second push finds everything there.
    let e = ok(&spo(&a, cloud, &["push", "many", "--remote", remote]));
    assert!(
        e.contains("pushed 0 cells") && e.contains("6 already there"),
        "{e}"
    );

    let b = Project::new(PIPE);
    let e = ok(&spo(&b, cloud, &["pull", "many", "--remote", remote]));
    assert!(
        e.contains("6 cells: 6 fetched, 0 already here, 0 not in the remote"),
        "{e}"
    );
    assert_same_stores(&a, &b);
    let v = spo(&b, cloud, &["verify"]);
    assert!(
        v.status.success() && text(&v.stdout).contains("verified 6 cells: 0 damaged"),
        "{}",
        text(&v.stdout)
    );
    let ta = ok_stdout(spo(&a, cloud, &["tables", "t"]));
    assert_eq!(ok_stdout(spo(&b, cloud, &["tables", "t"])), ta);
    let e = ok(&spo(&b, cloud, &["run", "many"]));
    assert!(e.contains("6 cells: 0 ran, 6 cached"), "{e}");
    // Pulling again fetches nothing.
    let e = ok(&spo(&b, cloud, &["pull", "many", "--remote", remote]));
    assert!(e.contains("0 fetched, 6 already here"), "{e}");
    if let Some(c) = cloud {
        assert_no_secret(b.path(), c);
        assert_no_secret(a.path(), c);
    }
}

fn ok_stdout(out: Output) -> String {
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

/// The tests each backend runs, one `#[test]` per backend and test (`s3::push_then_pull…`).
macro_rules! on_each_cloud {
    ($($test:ident),* $(,)?) => {
        mod s3 {
            $( #[test] fn $test() { if let Some(c) = super::S3Server::start() { super::$test(&c) } } )*
        }
        mod azure {
            $( #[test] fn $test() { if let Some(c) = super::AzureServer::start() { super::$test(&c) } } )*
        }
        mod gcs {
            $( #[test] fn $test() { if let Some(c) = super::GcsServer::start() { super::$test(&c) } } )*
        }
    };
}

on_each_cloud!(
    push_then_pull_gives_the_same_bytes,
    run_with_a_remote_in_pipeline_toml_computes_nothing,
    a_corrupt_remote_blob_is_detected_and_never_committed,
    two_concurrent_pushes_are_safe,
    an_unreachable_missing_or_unauthorised_remote_is_a_clear_error_and_loses_nothing,
);

fn push_then_pull_gives_the_same_bytes(c: &dyn Cloud) {
    c.create_bucket("team");
    push_then_pull(Some(c), &c.url("team", "spo/cache"));
    let keys = c.bucket("team").raw_list("spo/cache").unwrap();
    assert_eq!(
        keys.iter()
            .filter(|k| k.starts_with("spo/cache/ac/"))
            .count(),
        6
    );
    assert_eq!(
        keys.iter()
            .filter(|k| k.starts_with("spo/cache/cas/sha256/"))
            .count(),
        12,
        "{keys:?}"
    );
}

#[test]
fn push_then_pull_through_a_directory_gives_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    push_then_pull(
        None,
        &format!("file://{}", dir.path().join("cache").display()),
    );
}

fn run_with_a_remote_in_pipeline_toml_computes_nothing(c: &dyn Cloud) {
    c.create_bucket("team");
    let url = c.url("team", "c");
    let a = pushed(Some(c), &url);
    let b = Project::new(&format!("[cache]\nremote = \"{url}\"\n{PIPE}"));
    let cloud = Some(c);
    let e = ok(&spo(&b, cloud, &["run", "many"]));
    assert!(
        e.contains("6 cells: 0 ran, 0 cached, 6 fetched, 0 failed"),
        "{e}"
    );
    assert_same_stores(&a, &b);
    let st = ok_stdout(spo(&b, cloud, &["status", "many"]));
    assert!(st.contains("6 cached, 0 stale, 0 missing"), "{st}");
    // A cell the remote does not hold is computed here; `--no-remote` never asks it.
    let e = ok(&spo(
        &b,
        cloud,
        &["run", "many", "--set", "post.cmd=\"echo 7 > $SPO_OUT/x\""],
    ));
    assert!(e.contains("6 cells: 3 ran, 3 cached, 0 fetched"), "{e}");
    let e = ok(&spo(&b, None, &["run", "many", "--no-remote"]));
    assert!(e.contains("6 cells: 0 ran, 6 cached, 0 failed"), "{e}");
    assert_no_secret(b.path(), c);
}

/// The remote path of one of the `gen` cells' blobs (its random file).
fn a_gen_blob(a: &Project) -> (String, String) {
    let out = ok_stdout(spo(a, None, &["status", "many", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let key = v
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["label"].as_str().unwrap().starts_with("gen"))
        .unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(a.path().join(format!("runs/store/{key}/manifest.json"))).unwrap(),
    )
    .unwrap();
    let file = m["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["bytes"].as_u64().unwrap() > 1000)
        .unwrap();
    let sha = file["sha256"].as_str().unwrap();
    (key, format!("cas/sha256/{}/{sha}", &sha[..2]))
}

fn a_corrupt_remote_blob_is_detected_and_never_committed(c: &dyn Cloud) {
    c.create_bucket("team");
    let url = c.url("team", "c");
    let cloud = Some(c);
    let a = pushed(cloud, &url);
    let (key, blob) = a_gen_blob(&a);
    let bucket = c.bucket("team");
    let path = format!("c/{blob}");
    let mut bytes = bucket.raw_get(&path).unwrap().expect("the blob was pushed");
    bytes[1000] ^= 0x40;
    bucket.raw_put(&path, bytes).unwrap();

    let b = Project::new(PIPE);
    let out = spo(&b, cloud, &["pull", "many", "--remote", &url]);
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out.stderr);
    assert!(
        e.contains(&format!(
            "names blob {url}/{blob} (file `sub/r.bin`), which is corrupt"
        )),
        "{e}"
    );
    assert!(e.contains(&format!("{url}/ac/{key}.json")), "{e}");
    assert!(!b.path().join("runs/store").join(&key).exists());
    // The other cells came; the one reading the bad cell was not keyed, so not fetched.
    assert!(e.contains("4 fetched") && e.contains("1 skipped"), "{e}");
    assert!(staging_is_empty(&b));
    let v = spo(&b, None, &["verify"]);
    assert!(text(&v.stdout).contains("verified 4 cells: 0 damaged"));

    // `run` with the remote computes that cell itself, saying why, and fetches the rest.
    let e = ok(&spo(&b, cloud, &["run", "many", "--remote", &url]));
    assert!(e.contains("which is corrupt: its bytes hash to"), "{e}");
    assert!(e.contains("bytes); computing it here"), "{e}");
    assert!(e.contains("6 cells: 2 ran, 4 cached, 0 fetched"), "{e}");
    let v = spo(&b, None, &["verify"]);
    assert!(text(&v.stdout).contains("verified 6 cells: 0 damaged"));
}

/// A pull killed (SIGKILL) at whatever point leaves only whole cells; the next pull completes
/// the store.
#[test]
fn a_killed_pull_leaves_only_whole_cells() {
    let dir = tempfile::tempdir().unwrap();
    let remote = format!("file://{}", dir.path().display());
    let a = pushed(None, &remote);
    for delay_ms in [5, 20, 60] {
        let b = Project::new(PIPE);
        let mut child = bin()
            .args(["pull", "many", "--remote", &remote])
            .current_dir(b.path())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        let v = spo(&b, None, &["verify"]);
        assert!(v.status.success(), "{}", text(&v.stdout));
        let e = ok(&spo(&b, None, &["pull", "many", "--remote", &remote]));
        assert!(e.contains("0 failed"), "{e}");
        assert_same_stores(&a, &b);
        assert!(staging_is_empty(&b));
    }
}

#[test]
fn a_manifest_naming_a_missing_blob_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let remote = format!("file://{}", dir.path().display());
    let a = pushed(None, &remote);
    let (key, blob) = a_gen_blob(&a);
    std::fs::remove_file(dir.path().join(&blob)).unwrap();
    let b = Project::new(PIPE);
    let out = spo(&b, None, &["pull", "many", "--remote", &remote]);
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out.stderr);
    assert!(
        e.contains(&format!(
            "the remote manifest {remote}/ac/{key}.json names blob {remote}/{blob}"
        )) && e.contains("which is missing"),
        "{e}"
    );
    assert!(!b.path().join("runs/store").join(&key).exists());
    assert!(staging_is_empty(&b));

    // A corrupt blob in a directory remote, too.
    let dir2 = tempfile::tempdir().unwrap();
    let remote2 = format!("file://{}", dir2.path().display());
    let a2 = pushed(None, &remote2);
    let (key2, blob2) = a_gen_blob(&a2);
    let p = dir2.path().join(&blob2);
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&p, bytes).unwrap();
    let c = Project::new(PIPE);
    let out = spo(&c, None, &["pull", "many", "--remote", &remote2]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(&format!(
            "{remote2}/{blob2} (file `sub/r.bin`), which is corrupt"
        )),
        "{}",
        text(&out.stderr)
    );
    assert!(!c.path().join("runs/store").join(&key2).exists());
    assert!(staging_is_empty(&c));
}

/// Two stores that computed the same keys with different (random) bytes push at once (the three
/// `gen` keys are the same in both; the `post` keys, made of `gen`'s content digests, differ):
/// each key's manifest in the remote is one store's, whole, a later push by either changes
/// nothing, and a pull gives a store that verifies. First, put-if-absent itself: a second
/// create of one object is refused and leaves the first's bytes.
fn two_concurrent_pushes_are_safe(c: &dyn Cloud) {
    c.create_bucket("team");
    let url = c.url("team", "c");
    let bucket = c.bucket("team");
    assert!(
        bucket
            .raw_put_if_absent("probe", b"first".to_vec())
            .unwrap()
    );
    assert!(
        !bucket
            .raw_put_if_absent("probe", b"second".to_vec())
            .unwrap(),
        "{}: a second put-if-absent was not refused",
        c.name()
    );
    assert_eq!(bucket.raw_get("probe").unwrap().unwrap(), b"first");
    let a = Project::new(PIPE);
    let b = Project::new(PIPE);
    for p in [&a, &b] {
        ok(&spo(p, None, &["run", "many"]));
    }
    let spawn = |p: &Project| {
        bin()
            .args(["push", "many", "--remote", &url])
            .current_dir(p.path())
            .envs(c.env())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (ca, cb) = (spawn(&a), spawn(&b));
    for child in [ca, cb] {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let keys = bucket.raw_list("c/ac").unwrap();
    assert_eq!(keys.len(), 9, "{keys:?}");
    let (fa, fb) = (store_files(&a), store_files(&b));
    let mut ac = BTreeMap::new();
    for k in &keys {
        let key = k.trim_start_matches("c/ac/").trim_end_matches(".json");
        let remote = bucket.raw_get(k).unwrap().unwrap();
        let rel = format!("{key}/manifest.json");
        assert!(
            fa.get(&rel) == Some(&remote) || fb.get(&rel) == Some(&remote),
            "the remote manifest of {key} is neither store's"
        );
        ac.insert(k.clone(), remote);
    }
    for p in [&a, &b] {
        let e = ok(&spo(p, Some(c), &["push", "many", "--remote", &url]));
        assert!(
            e.contains("pushed 0 cells") && e.contains("6 already there"),
            "{e}"
        );
    }
    for (k, bytes) in &ac {
        assert_eq!(&bucket.raw_get(k).unwrap().unwrap(), bytes, "{k} changed");
    }
    let fresh = Project::new(PIPE);
    let e = ok(&spo(&fresh, Some(c), &["pull", "many", "--remote", &url]));
    assert!(e.contains("6 fetched"), "{e}");
    let v = spo(&fresh, None, &["verify"]);
    assert!(text(&v.stdout).contains("verified 6 cells: 0 damaged"));
}

fn an_unreachable_missing_or_unauthorised_remote_is_a_clear_error_and_loses_nothing(c: &dyn Cloud) {
    c.create_bucket("team");
    let url = c.url("team", "c");
    let a = Project::new(PIPE);
    ok(&spo(&a, None, &["run", "many"]));
    let before = store_files(&a);
    let check = |out: Output, needles: &[&str]| {
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        let e = text(&out.stderr);
        for n in needles {
            assert!(e.contains(n), "`{n}` not in: {e}");
        }
        assert_eq!(store_files(&a), before, "the store changed");
    };
    let changed = "post.cmd=\"echo 5 > $SPO_OUT/x\"";
    let cannot = format!("cannot use the remote cache {url}");

    // Nothing listens on the port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = |args: &[&str]| spo_env(&a, Some(c), c.env_dead(port), args);
    check(dead(&["push", "many", "--remote", &url]), &[&cannot]);
    check(
        dead(&["run", "post", "--remote", &url, "--set", changed]),
        &[&cannot],
    );

    // No such bucket.
    let nobucket = c.url("nobucket", "c");
    let cannot_nb = format!("cannot use the remote cache {nobucket}");
    check(
        spo(&a, Some(c), &["push", "many", "--remote", &nobucket]),
        &[&cannot_nb, c.no_bucket()],
    );
    let b = Project::new(PIPE);
    let out = spo(&b, Some(c), &["pull", "many", "--remote", &nobucket]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(&cannot_nb),
        "{}",
        text(&out.stderr)
    );
    assert!(b.committed().is_empty());

    // Credentials the server refuses.
    match c.refused() {
        Some((env, refusal)) => {
            check(
                spo_env(
                    &a,
                    Some(c),
                    env.clone(),
                    &["push", "many", "--remote", &url],
                ),
                &[&cannot, refusal],
            );
            check(
                spo_env(
                    &a,
                    Some(c),
                    env,
                    &["run", "post", "--remote", &url, "--set", changed],
                ),
                &[&cannot, refusal],
            );
        }
        None => eprintln!(
            "{} checks no credentials: refused credentials not tested on it",
            c.name()
        ),
    }
    assert_no_secret(a.path(), c);
    let v = spo(&a, None, &["verify"]);
    assert!(text(&v.stdout).contains("verified 6 cells: 0 damaged"));
}

#[test]
fn bad_remote_settings_are_usage_errors() {
    let p = Project::new(&format!("[cache]\nremote = \"ftp://x\"\n{PIPE}"));
    let out = spo(&p, None, &["run", "many"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr)
            .contains("pipeline.toml:2:10: `cache.remote` is `ftp://x`, not a remote cache"),
        "{}",
        text(&out.stderr)
    );
    let p = Project::new(PIPE);
    let out = spo(&p, None, &["push"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no remote cache: give --remote URL"),
        "{}",
        text(&out.stderr)
    );
}
