//! The store and the executor under hostile conditions (issue 13): stage processes never
//! outlive spo-pipe, `gc` never pulls inputs from under a run, damaged cells are never used,
//! `verify --repair` quarantines damage, and every committed file is readable by others.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::{Project, text, wait_for};

/// A stage whose work runs in a pipeline of subshells, ticking into its scratch directory.
const TREE: &str = r#"
[stage.tree]
kind = "command"
params = { cmd = "touch $SPO_SCRATCH/started; (while :; do echo t >> $SPO_SCRATCH/tick; sleep 0.02; done) | cat > /dev/null" }
"#;

fn tick_len(p: &Project) -> u64 {
    let scratch = p.path().join("runs/scratch");
    std::fs::read_dir(&scratch)
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::metadata(e.path().join("tick")).ok())
        .map(|m| m.len())
        .sum()
}

fn started(p: &Project) -> bool {
    std::fs::read_dir(p.path().join("runs/scratch"))
        .map(|d| {
            d.filter_map(Result::ok)
                .any(|e| e.path().join("tick").exists())
        })
        .unwrap_or(false)
}

/// Ends spo-pipe with `signal` mid-stage and checks that nothing of the stage survives it.
fn stage_tree_dies_with_spo_pipe(signal: &str) {
    let p = Project::new(TREE);
    let mut child = p.spawn(&["run"]);
    for _ in 0..3000 {
        if started(&p) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(started(&p), "the stage never started");
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap()
            .success()
    );
    child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let len = tick_len(&p);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        tick_len(&p),
        len,
        "a stage process kept working after {signal}"
    );
    assert_eq!(
        p.stage_processes(),
        Vec::<u32>::new(),
        "survivors after {signal}"
    );
}

#[test]
fn kill_9_of_spo_pipe_ends_the_whole_stage_tree() {
    stage_tree_dies_with_spo_pipe("-KILL");
}

#[test]
fn sigterm_sigint_and_sighup_end_the_whole_stage_tree() {
    for s in ["-TERM", "-INT", "-HUP"] {
        stage_tree_dies_with_spo_pipe(s);
    }
}

#[test]
fn a_background_job_cannot_write_into_a_committed_cell() {
    let p = Project::new(
        r#"
[stage.bg]
kind = "command"
params = { cmd = "cd $SPO_OUT && (sleep 0.3; echo late > late) & echo ok > $SPO_OUT/o" }
"#,
    );
    let out = p.run(&["run"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    std::thread::sleep(Duration::from_millis(700));
    let out = p.run(&["verify"]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert_eq!(p.stage_processes(), Vec::<u32>::new());
}

/// A process that leaves the stage's group but keeps its stdin (the cell's lock) keeps a rerun
/// out of the cell's scratch directory until it ends. The stage writes `first` only once the
/// survivor is in its own session: killed before that, the survivor would die with the group
/// (under load this happened, about one run in five).
#[test]
fn a_rerun_waits_for_a_survivor_holding_the_cell() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let lp = log.display();
    let p = Project::new(&format!(
        r#"
[stage.s]
kind = "command"
params = {{ cmd = "exec 3<&0; if [ -f $SPO_SCRATCH/once ]; then echo rerun >> {lp}; echo ok > $SPO_OUT/o; exit 0; fi; touch $SPO_SCRATCH/once; setsid sh -c 'touch {lp}.detached; sleep 1; echo survivor-end >> {lp}' <&3 & while [ ! -f {lp}.detached ]; do sleep 0.01; done; echo first >> {lp}; sleep 30" }}
"#
    ));
    let mut child = p.spawn(&["run"]);
    wait_for(&log);
    child.kill().unwrap();
    child.wait().unwrap();
    let out = p.run(&["run"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        lines.lines().collect::<Vec<_>>(),
        ["first", "survivor-end", "rerun"],
        "the rerun started while the survivor still held the cell"
    );
}

#[test]
fn gc_keeps_what_a_concurrent_run_reads_until_it_ends() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("b-started");
    let p = Project::new(&format!(
        r#"
[stage.a]
kind = "command"
params = {{ cmd = "echo 1 > $SPO_OUT/a" }}
[stage.b]
kind = "command"
needs = ["a"]
params = {{ cmd = "touch {}; sleep 1; cat $SPO_INPUT_A/a > $SPO_OUT/b" }}
"#,
        marker.display()
    ));
    assert!(p.run(&["run", "a"]).status.success());
    let child = p.spawn(&["run", "b"]);
    wait_for(&marker);
    // Another configuration of `a`: the cell `b` is reading is unreached from this target.
    let gc = p.run(&["gc", "a", "--set", "a.cmd=\"echo 2 > $SPO_OUT/a\""]);
    assert!(gc.status.success(), "{}", text(&gc.stderr));
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&gc.stdout).contains("in use by a live run"),
        "{}",
        text(&gc.stdout)
    );
    assert_eq!(p.committed().len(), 2);
    // Once the run is over, what it protected is fair game.
    let gc = p.run(&["gc", "a", "--set", "a.cmd=\"echo 2 > $SPO_OUT/a\""]);
    assert!(
        text(&gc.stdout).contains("removed 2 cells"),
        "{}",
        text(&gc.stdout)
    );
    assert!(p.committed().is_empty());
}

const TWO: &str = r#"
[stage.a]
kind = "command"
params = { cmd = "echo 3 > $SPO_OUT/n.txt" }
[stage.b]
kind = "command"
needs = ["a"]
params = { cmd = "echo $(( $(cat $SPO_INPUT_A/n.txt) * 2 )) > $SPO_OUT/n.txt" }
"#;

fn cell_of(p: &Project, file: &str, content: &str) -> std::path::PathBuf {
    p.committed()
        .into_iter()
        .find(|c| std::fs::read_to_string(c.join(file)).is_ok_and(|s| s.trim() == content))
        .unwrap()
}

fn flip(path: &Path, from: &str, to: &str) {
    let mut perms = std::fs::metadata(path).unwrap().permissions();
    perms.set_mode(0o644);
    std::fs::set_permissions(path, perms).unwrap();
    let s = std::fs::read_to_string(path).unwrap();
    assert_eq!(s.len(), s.replace(from, to).len());
    std::fs::write(path, s.replace(from, to)).unwrap();
}

#[test]
fn a_damaged_input_stops_the_run_naming_file_and_cell_then_repair_recomputes_it() {
    let p = Project::new(TWO);
    assert!(p.run(&["run", "a"]).status.success());
    let a = cell_of(&p, "n.txt", "3");
    flip(&a.join("n.txt"), "3", "4"); // same size
    let out = p.run(&["run", "b"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cell a (") && err.contains("n.txt") && err.contains("damaged"),
        "{err}"
    );
    assert_eq!(
        p.committed().len(),
        1,
        "nothing computed from damaged bytes"
    );

    let out = p.run(&["verify", "--repair"]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("quarantined cell"),
        "{}",
        text(&out.stdout)
    );
    assert!(p.committed().is_empty());
    let out = p.run(&["run", "b"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("2 ran"), "{}", text(&out.stderr));
    cell_of(&p, "n.txt", "6");
    assert!(p.run(&["verify"]).status.success());
}

#[test]
fn a_deleted_file_is_no_cache_hit() {
    let p = Project::new(TWO);
    assert!(p.run(&["run", "a"]).status.success());
    std::fs::remove_file(cell_of(&p, "n.txt", "3").join("n.txt")).unwrap();
    let out = p.run(&["run", "a"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("n.txt") && err.contains("verify --repair"),
        "{err}"
    );
}

#[test]
fn every_reader_survives_one_bad_entry_and_repair_touches_nothing_else() {
    let p = Project::new(
        r#"
[pipeline]
seeds = [1, 2]
[stage.a]
kind = "command"
params = { cmd = "echo '{\"acc\": 0.5}' > $SPO_OUT/metrics.json" }
[stage.b]
kind = "command"
needs = ["a"]
params = { cmd = "echo '{\"acc\": 0.6}' > $SPO_OUT/metrics.json" }
[stage.c]
kind = "command"
params = { cmd = "echo c > $SPO_OUT/c" }
[table.t]
rows = { A = "a", B = "b" }
metrics = ["acc"]
"#,
    );
    assert!(p.run(&["run", "t", "c"]).status.success());
    let c = cell_of(&p, "c", "c");
    let manifest = c.join("manifest.json");
    let mut perms = std::fs::metadata(&manifest).unwrap().permissions();
    perms.set_mode(0o644);
    std::fs::set_permissions(&manifest, perms).unwrap();
    let bytes = std::fs::read(&manifest).unwrap();
    std::fs::write(&manifest, &bytes[..bytes.len() / 2]).unwrap();
    let index = p.path().join("runs/index");
    let row = std::fs::read_dir(&index)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(&row, b"not parquet").unwrap();
    let row_name = row.file_name().unwrap().to_string_lossy().into_owned();

    let out = p.run(&["status"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("damaged"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stderr).contains("manifest.json"),
        "{}",
        text(&out.stderr)
    );
    for args in [&["tables"][..], &["diff", "a", "b"]] {
        let out = p.run(args);
        assert!(
            text(&out.stderr).contains(&row_name),
            "{args:?} names the bad row: {}",
            text(&out.stderr)
        );
        assert_ne!(out.status.code(), Some(101), "{}", text(&out.stderr));
    }
    let out = p.run(&["gc", "--dry-run"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let before: Vec<_> = p.committed();
    let out = p.run(&["verify", "--repair"]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    let after: Vec<_> = p.committed();
    assert_eq!(after.len(), before.len() - 1, "only the damaged cell moved");
    assert!(!after.contains(&c));
    assert!(p.run(&["verify"]).status.success());
    let out = p.run(&["run", "t", "c"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("1 ran"), "{}", text(&out.stderr));
    assert!(p.run(&["tables"]).status.success());
}

#[test]
fn committed_files_are_readable_by_others_whatever_the_umask() {
    let p = Project::new(
        r#"
[stage.m]
kind = "command"
params = { cmd = "umask 077; echo x > $SPO_OUT/f; mkdir $SPO_OUT/d; echo y > $SPO_OUT/d/g" }
"#,
    );
    assert!(p.run(&["run"]).status.success());
    let cell = p.committed().pop().unwrap();
    let mode = |rel: &str| {
        std::fs::metadata(cell.join(rel))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(
        [
            mode("f"),
            mode("d"),
            mode("d/g"),
            mode("manifest.json"),
            mode(".")
        ],
        [0o644, 0o755, 0o644, 0o644, 0o755]
    );
}
