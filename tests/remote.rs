//! The remote cache end to end: `push`, `pull` and `run` with `[cache] remote`, against a real S3
//! server on loopback (moto's, started by each test; skipped with a message where it cannot
//! start) and against a directory remote (always).

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

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

const SECRET: &str = "spo-test-secret-do-not-leak";

/// spo-pipe in `p` with the S3 server's environment (if any).
fn spo(p: &Project, s3: Option<&S3Server>, args: &[&str]) -> Output {
    let mut c: Command = bin();
    c.args(args).current_dir(p.path());
    if let Some(s) = s3 {
        c.envs(s.env());
    }
    let out = c.output().unwrap();
    assert!(
        !text(&out.stderr).contains(SECRET) && !text(&out.stdout).contains(SECRET),
        "a credential in the output of {args:?}"
    );
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

/// No credential anywhere in the store.
fn assert_no_secret(dir: &Path) {
    for f in support::walk(dir) {
        if f.is_file() {
            let b = std::fs::read(&f).unwrap();
            assert!(
                !b.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
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
fn pushed(s3: Option<&S3Server>, remote: &str) -> Project {
    let a = Project::new(PIPE);
    let e = ok(&spo(&a, s3, &["run", "many"]));
    assert!(e.contains("6 cells: 6 ran"), "{e}");
    let e = ok(&spo(&a, s3, &["push", "many", "--remote", remote]));
    assert!(
        e.contains("pushed 6 cells (12 blobs") && e.contains(", 0 already there"),
        "{e}"
    );
    a
}

/// Push, then pull into a fresh store: every file and manifest identical, `verify` clean, the
/// same table, and a run there computes nothing.
fn push_then_pull(s3: Option<&S3Server>, remote: &str) {
    let a = pushed(s3, remote);
    // A second push finds everything there.
    let e = ok(&spo(&a, s3, &["push", "many", "--remote", remote]));
    assert!(
        e.contains("pushed 0 cells") && e.contains("6 already there"),
        "{e}"
    );

    let b = Project::new(PIPE);
    let e = ok(&spo(&b, s3, &["pull", "many", "--remote", remote]));
    assert!(
        e.contains("6 cells: 6 fetched, 0 already here, 0 not in the remote"),
        "{e}"
    );
    assert_same_stores(&a, &b);
    let v = spo(&b, s3, &["verify"]);
    assert!(
        v.status.success() && text(&v.stdout).contains("verified 6 cells: 0 damaged"),
        "{}",
        text(&v.stdout)
    );
    let ta = ok_stdout(spo(&a, s3, &["tables", "t"]));
    assert_eq!(ok_stdout(spo(&b, s3, &["tables", "t"])), ta);
    let e = ok(&spo(&b, s3, &["run", "many"]));
    assert!(e.contains("6 cells: 0 ran, 6 cached"), "{e}");
    // Pulling again fetches nothing.
    let e = ok(&spo(&b, s3, &["pull", "many", "--remote", remote]));
    assert!(e.contains("0 fetched, 6 already here"), "{e}");
    assert_no_secret(b.path());
    assert_no_secret(a.path());
}

fn ok_stdout(out: Output) -> String {
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

#[test]
fn push_then_pull_through_s3_gives_the_same_bytes() {
    let Some(s3) = S3Server::start() else { return };
    s3.create_bucket("team");
    push_then_pull(Some(&s3), "s3://team/spo/cache");
    let keys = s3.bucket("team").raw_list("spo/cache").unwrap();
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

#[test]
fn run_with_a_remote_in_pipeline_toml_computes_nothing() {
    let Some(s3) = S3Server::start() else { return };
    s3.create_bucket("team");
    let a = pushed(Some(&s3), "s3://team/c");
    let b = Project::new(&format!("[cache]\nremote = \"s3://team/c\"\n{PIPE}"));
    let e = ok(&spo(&b, Some(&s3), &["run", "many"]));
    assert!(
        e.contains("6 cells: 0 ran, 0 cached, 6 fetched, 0 failed"),
        "{e}"
    );
    assert_same_stores(&a, &b);
    let st = ok_stdout(spo(&b, Some(&s3), &["status", "many"]));
    assert!(st.contains("6 cached, 0 stale, 0 missing"), "{st}");
    // A cell the remote does not hold is computed here; `--no-remote` never asks it.
    let e = ok(&spo(
        &b,
        Some(&s3),
        &["run", "many", "--set", "post.cmd=\"echo 7 > $SPO_OUT/x\""],
    ));
    assert!(e.contains("6 cells: 3 ran, 3 cached, 0 fetched"), "{e}");
    let e = ok(&spo(&b, None, &["run", "many", "--no-remote"]));
    assert!(e.contains("6 cells: 0 ran, 6 cached, 0 failed"), "{e}");
    assert_no_secret(b.path());
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

#[test]
fn a_corrupt_remote_blob_is_detected_and_never_committed() {
    let Some(s3) = S3Server::start() else { return };
    s3.create_bucket("team");
    let a = pushed(Some(&s3), "s3://team/c");
    let (key, blob) = a_gen_blob(&a);
    let bucket = s3.bucket("team");
    let path = format!("c/{blob}");
    let mut bytes = bucket.raw_get(&path).unwrap().expect("the blob was pushed");
    bytes[1000] ^= 0x40;
    bucket.raw_put(&path, bytes).unwrap();

    let b = Project::new(PIPE);
    let out = spo(&b, Some(&s3), &["pull", "many", "--remote", "s3://team/c"]);
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out.stderr);
    assert!(
        e.contains(&format!(
            "names blob s3://team/c/{blob} (file `sub/r.bin`), which is corrupt"
        )),
        "{e}"
    );
    assert!(e.contains(&format!("s3://team/c/ac/{key}.json")), "{e}");
    assert!(!b.path().join("runs/store").join(&key).exists());
    // The other cells came; the one reading the bad cell was not keyed, so not fetched.
    assert!(e.contains("4 fetched") && e.contains("1 skipped"), "{e}");
    assert!(staging_is_empty(&b));
    let v = spo(&b, None, &["verify"]);
    assert!(text(&v.stdout).contains("verified 4 cells: 0 damaged"));

    // `run` with the remote computes that cell itself, saying why, and fetches the rest.
    let e = ok(&spo(
        &b,
        Some(&s3),
        &["run", "many", "--remote", "s3://team/c"],
    ));
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
/// nothing, and a pull gives a store that verifies.
#[test]
fn two_concurrent_pushes_are_safe() {
    let Some(s3) = S3Server::start() else { return };
    s3.create_bucket("team");
    let a = Project::new(PIPE);
    let b = Project::new(PIPE);
    for p in [&a, &b] {
        ok(&spo(p, None, &["run", "many"]));
    }
    let spawn = |p: &Project| {
        bin()
            .args(["push", "many", "--remote", "s3://team/c"])
            .current_dir(p.path())
            .envs(s3.env())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (ca, cb) = (spawn(&a), spawn(&b));
    for c in [ca, cb] {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let bucket = s3.bucket("team");
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
        let e = ok(&spo(
            p,
            Some(&s3),
            &["push", "many", "--remote", "s3://team/c"],
        ));
        assert!(
            e.contains("pushed 0 cells") && e.contains("6 already there"),
            "{e}"
        );
    }
    for (k, bytes) in &ac {
        assert_eq!(&bucket.raw_get(k).unwrap().unwrap(), bytes, "{k} changed");
    }
    let c = Project::new(PIPE);
    let e = ok(&spo(
        &c,
        Some(&s3),
        &["pull", "many", "--remote", "s3://team/c"],
    ));
    assert!(e.contains("6 fetched"), "{e}");
    let v = spo(&c, None, &["verify"]);
    assert!(text(&v.stdout).contains("verified 6 cells: 0 damaged"));
}

#[test]
fn an_unreachable_missing_or_unauthorised_remote_is_a_clear_error_and_loses_nothing() {
    let Some(s3) = S3Server::start() else { return };
    s3.create_bucket("team");
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

    // Nothing listens on the port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = |args: &[&str]| {
        bin()
            .args(args)
            .current_dir(a.path())
            .envs(s3.env())
            .env("AWS_ENDPOINT", format!("http://127.0.0.1:{port}"))
            .output()
            .unwrap()
    };
    check(
        dead(&["push", "many", "--remote", "s3://team/c"]),
        &["cannot use the remote cache s3://team/c"],
    );
    check(
        dead(&["run", "post", "--remote", "s3://team/c", "--set", changed]),
        &["cannot use the remote cache s3://team/c"],
    );

    // No such bucket.
    check(
        spo(
            &a,
            Some(&s3),
            &["push", "many", "--remote", "s3://nobucket/c"],
        ),
        &[
            "cannot use the remote cache s3://nobucket/c",
            "NoSuchBucket",
        ],
    );
    let b = Project::new(PIPE);
    let out = spo(
        &b,
        Some(&s3),
        &["pull", "many", "--remote", "s3://nobucket/c"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot use the remote cache s3://nobucket/c"),
        "{}",
        text(&out.stderr)
    );
    assert!(b.committed().is_empty());

    // Credentials the server refuses.
    s3.require_auth();
    check(
        spo(&a, Some(&s3), &["push", "many", "--remote", "s3://team/c"]),
        &["cannot use the remote cache s3://team/c", "403"],
    );
    check(
        spo(
            &a,
            Some(&s3),
            &["run", "post", "--remote", "s3://team/c", "--set", changed],
        ),
        &["cannot use the remote cache s3://team/c", "403"],
    );
    assert_no_secret(a.path());
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
