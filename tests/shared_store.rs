//! One store shared by several machines (docs/architecture.md, "Locks on a shared file
//! system"): two processes that see the store through different paths (a bind mount where this
//! test may make one, a symlink otherwise) and call themselves different machines
//! (`SPO_PIPE_HOST_ID`) never compute a cell twice; a dead machine's lease is taken over once
//! it has not beaten for the stale period; a live one is waited for.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{Project, bin, text};

/// A second path to `dir`: a bind mount if this process may make one, else a symlink.
struct Alias {
    path: PathBuf,
    mounted: bool,
}

impl Alias {
    fn new(dir: &Path, at: &Path) -> Alias {
        std::fs::create_dir_all(at).unwrap();
        let mounted = Command::new("mount")
            .arg("--bind")
            .arg(dir)
            .arg(at)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            std::fs::remove_dir(at).unwrap();
            std::os::unix::fs::symlink(dir, at).unwrap();
        }
        eprintln!(
            "the second path to the store is a {}",
            if mounted { "bind mount" } else { "symlink" }
        );
        Alias {
            path: at.to_owned(),
            mounted,
        }
    }
}

impl Drop for Alias {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(&self.path).status();
        }
    }
}

/// Three cells, each appending its name to a log outside the store and taking a moment.
fn pipeline(log: &Path) -> String {
    let log = log.display();
    format!(
        r#"
[stage.a]
kind = "command"
params = {{ cmd = "echo a >> {log} && sleep 0.3 && echo a > $SPO_OUT/o" }}
[stage.b]
kind = "command"
params = {{ cmd = "echo b >> {log} && sleep 0.3 && echo b > $SPO_OUT/o" }}
[stage.c]
kind = "command"
needs = ["a", "b"]
params = {{ cmd = "echo c >> {log} && sleep 0.3 && cat $SPO_INPUT_A/o $SPO_INPUT_B/o > $SPO_OUT/o" }}
"#
    )
}

#[test]
fn two_machines_through_two_paths_compute_each_cell_once() {
    let p = Project::new("");
    let log = p.path().join("computed.log");
    std::fs::write(p.path().join("pipeline.toml"), pipeline(&log)).unwrap();
    let store = p.path().join("runs");
    std::fs::create_dir_all(&store).unwrap();
    let alias = Alias::new(&store, &p.path().join("other-mount"));
    for round in 0..3 {
        // A fresh store each round (the log too).
        for d in std::fs::read_dir(&store).unwrap() {
            std::fs::remove_dir_all(d.unwrap().path()).unwrap();
        }
        let _ = std::fs::remove_file(&log);
        let start = |host: &str, store: &Path| {
            bin()
                .args(["run", "c", "--jobs", "2", "--store"])
                .arg(store)
                .current_dir(p.path())
                .env("SPO_PIPE_HOST_ID", host)
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let one = start("node-a", &store);
        let two = start("node-b", &alias.path);
        let (o1, o2) = (
            one.wait_with_output().unwrap(),
            two.wait_with_output().unwrap(),
        );
        assert!(o1.status.success(), "{}", text(&o1.stderr));
        assert!(o2.status.success(), "{}", text(&o2.stderr));
        let mut lines: Vec<String> = std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        lines.sort();
        assert_eq!(lines, ["a", "b", "c"], "round {round}: a cell ran twice");
        let v = p.run(&["verify"]);
        assert!(
            text(&v.stdout).contains("verified 3 cells: 0 damaged"),
            "{}",
            text(&v.stdout)
        );
        let leases: Vec<_> = std::fs::read_dir(store.join("locks"))
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().contains(".lease"))
            .collect();
        assert!(leases.is_empty(), "leases left: {leases:?}");
    }
}

/// The key of stage `a` (a root cell: its key is known before it runs).
fn key_of_a(p: &Project) -> String {
    let out = p.run(&["status", "a", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0]["key"].as_str().unwrap().to_owned()
}

fn foreign_lease(path: &Path) {
    std::fs::write(
        path,
        r#"{"host":"node-x","boot":"node-x","pid":4242,"token":"x-1","since":0.0}"#,
    )
    .unwrap();
}

#[test]
fn a_dead_machines_lease_is_taken_over() {
    let p = Project::new("");
    let log = p.path().join("computed.log");
    std::fs::write(p.path().join("pipeline.toml"), pipeline(&log)).unwrap();
    let key = key_of_a(&p);
    let lease = p.path().join(format!("runs/locks/{key}.lease"));
    foreign_lease(&lease);
    let out = bin()
        .args(["run", "a"])
        .current_dir(p.path())
        .env("SPO_PIPE_LEASE_SECS", "0.5")
        .output()
        .unwrap();
    let e = text(&out.stderr);
    assert!(out.status.success(), "{e}");
    assert!(e.contains("waiting  a"), "{e}");
    assert!(e.contains("took over the lease of node-x pid 4242"), "{e}");
    assert!(e.contains("1 cells: 1 ran"), "{e}");
    assert!(!lease.exists());
}

#[test]
fn a_beating_lease_of_another_machine_is_waited_for() {
    let p = Project::new("");
    let log = p.path().join("computed.log");
    std::fs::write(p.path().join("pipeline.toml"), pipeline(&log)).unwrap();
    let key = key_of_a(&p);
    let lease = p.path().join(format!("runs/locks/{key}.lease"));
    foreign_lease(&lease);
    // If this test fails half-way, the child ends by itself: the lease stops beating.
    let child = bin()
        .args(["run", "a"])
        .current_dir(p.path())
        .env("SPO_PIPE_LEASE_SECS", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // node-x beats every 50 ms for 3 s (three stale periods), then releases.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        let f = std::fs::File::options().write(true).open(&lease).unwrap();
        f.set_modified(std::time::SystemTime::now()).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !log.exists(),
        "the cell was computed while another machine held its lease"
    );
    std::fs::remove_file(&lease).unwrap();
    let out = child.wait_with_output().unwrap();
    let e = text(&out.stderr);
    assert!(out.status.success(), "{e}");
    assert!(
        e.contains("waiting  a") && e.contains("1 cells: 1 ran"),
        "{e}"
    );
    assert!(!e.contains("took over"), "{e}");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "a\n");
}
