//! The kill-9 soak (issue 13): a small DAG of command stages ‒ pipelines, subshells and a
//! resumable "training" loop that checkpoints into its scratch directory ‒ is run with `--jobs
//! 2`, raced by a `gc` of a narrower target, and killed with SIGKILL at random moments, at
//! least 50 times in all. After every kill no
//! stage process survives; every store, once a run finally completes, verifies clean and holds
//! exactly the cells (keys and bytes) of an uninterrupted run.

mod support;

use std::time::{Duration, Instant};

use support::{Project, text};

/// `train*` advance a checkpointed state by 25 steps; the state file is replaced atomically
/// (`mv`), so a kill at any point resumes from a consistent step. `train1` loops in a subshell
/// piped into `cat`, the shape that used to outlive a killed spo-pipe.
const DAG: &str = r#"
[stage.gen]
kind = "command"
params = { cmd = "seq 1 300 | awk '{ s += $1 * $1 } END { print s }' > $SPO_OUT/data" }

[stage.train1]
kind = "command"
needs = ["gen"]
params = { cmd = "f=$SPO_SCRATCH/state; [ -f $f ] || echo \"0 $(cat $SPO_INPUT_GEN/data)\" > $f; (while read i v < $f; [ $i -lt 25 ]; do sleep 0.02; echo \"$((i + 1)) $(( (v * 31 + i) % 1000003 ))\" > $f.tmp; mv $f.tmp $f; echo step $i; done) | cat >> $SPO_SCRATCH/log; cut -d' ' -f2 $f > $SPO_OUT/weights" }

[stage.train2]
kind = "command"
needs = ["gen"]
params = { cmd = "f=$SPO_SCRATCH/state; [ -f $f ] || echo \"0 7\" > $f; while read i v < $f; [ $i -lt 25 ]; do (sleep 0.02) | cat; echo \"$((i + 1)) $(( (v * 17 + i) % 999983 ))\" > $f.tmp; mv $f.tmp $f; done; cut -d' ' -f2 $f > $SPO_OUT/weights" }

[stage.eval]
kind = "command"
needs = ["train1", "train2"]
params = { cmd = "sleep 0.1; cat $SPO_INPUT_TRAIN1/weights $SPO_INPUT_TRAIN2/weights | sort -n > $SPO_OUT/scores; echo \"{\\\"n\\\": $(wc -l < $SPO_OUT/scores)}\" > $SPO_OUT/metrics.json" }
"#;

/// (label, key, output digest) of every committed cell, sorted.
fn cells(p: &Project) -> Vec<(String, String, String)> {
    let mut v: Vec<_> = p
        .committed()
        .iter()
        .map(|c| {
            let m: serde_json::Value =
                serde_json::from_slice(&std::fs::read(c.join("manifest.json")).unwrap()).unwrap();
            let s = |k: &str| m[k].as_str().unwrap().to_owned();
            (s("label"), s("key"), s("digest"))
        })
        .collect();
    v.sort();
    v
}

fn no_survivors(p: &Project) {
    let t0 = Instant::now();
    while !p.stage_processes().is_empty() {
        assert!(
            t0.elapsed() < Duration::from_millis(500),
            "stage processes survived spo-pipe: {:?}",
            p.stage_processes()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn fifty_random_kills_leave_a_verified_store_identical_to_an_uninterrupted_run() {
    let reference = Project::new(DAG);
    let out = reference.run(&["run", "--jobs", "2"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let expected = cells(&reference);
    assert_eq!(expected.len(), 4);

    let mut rng: u64 = 0x5eed;
    let mut kills = 0;
    let mut stores = 0;
    let mut gc_removed = 0;
    while kills < 50 {
        let p = Project::new(DAG);
        loop {
            let mut child = p.spawn(&["run", "--jobs", "2"]);
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let wait = 20 + (rng >> 33) % 300;
            std::thread::sleep(Duration::from_millis(wait / 2));
            // A gc for a narrower target meanwhile: it may drop cells of earlier (killed) runs,
            // never one the live run has resolved.
            let gc = p.run(&["gc", "gen"]);
            assert!(gc.status.success(), "{}", text(&gc.stderr));
            gc_removed += text(&gc.stdout)
                .lines()
                .filter(|l| l.starts_with("removed ") && !l.contains(" cells ("))
                .count();
            std::thread::sleep(Duration::from_millis(wait / 2));
            if child.try_wait().unwrap().is_some() {
                break; // finished before the kill
            }
            child.kill().unwrap();
            child.wait().unwrap();
            kills += 1;
            no_survivors(&p);
        }
        let out = p.run(&["run", "--jobs", "2"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let out = p.run(&["verify"]);
        assert!(out.status.success(), "{}", text(&out.stdout));
        assert_eq!(cells(&p), expected, "after {kills} kills");
        assert_eq!(
            std::fs::read_dir(p.path().join("runs/staging"))
                .unwrap()
                .count(),
            0,
            "leftover staging is swept"
        );
        stores += 1;
    }
    eprintln!("{kills} kills over {stores} stores; the racing gc removed {gc_removed} cells");
}
