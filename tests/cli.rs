//! The spo-pipe binary end to end: exit codes, messages, kill -9 and resume, concurrent runs,
//! verification. Stages here are `command` cells running small shell scripts.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use support::{Project, bin, text};

const TWO: &str = r#"
[stage.a]
kind = "command"
params = { cmd = "echo 3 > $SPO_OUT/n.txt && echo '{\"n\": 3}' > $SPO_OUT/metrics.json" }

[stage.b]
kind = "command"
needs = ["a"]
params = { cmd = "echo $(( $(cat $SPO_INPUT_A/n.txt) * 2 )) > $SPO_OUT/n.txt" }
"#;

#[test]
fn run_then_noop_then_why_after_set() {
    let p = Project::new(TWO);
    let out = p.run(&["run", "b"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("2 cells: 2 ran, 0 cached"),
        "{}",
        text(&out.stderr)
    );
    let out = p.run(&["run", "b"]);
    assert!(
        text(&out.stderr).contains("2 cells: 0 ran, 2 cached"),
        "{}",
        text(&out.stderr)
    );
    let out = p.run(&["why", "a", "--set", "a.cmd=\"echo 4 > $SPO_OUT/n.txt\""]);
    let s = text(&out.stdout);
    assert!(
        s.contains("a: will rerun") && s.contains("param cmd:"),
        "{s}"
    );
    let out = p.run(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert!(v.as_array().unwrap().iter().all(|c| c["state"] == "cached"));
    let out = p.run(&["show", "b"]);
    assert!(text(&out.stdout).contains("n.txt"), "{}", text(&out.stdout));
    let out = p.run(&["verify"]);
    assert!(
        out.status.success() && text(&out.stdout).contains("verified 2 cells: 0 damaged"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn exit_codes_and_messages() {
    let p = Project::new("[stage.a]\nkind = \"comand\"\n");
    let out = p.run(&["run"]);
    assert_eq!(out.status.code(), Some(2));
    let e = text(&out.stderr);
    assert!(
        e.contains("pipeline.toml:2:8: unknown stage kind `comand`")
            && e.contains("did you mean `command`?"),
        "{e}"
    );

    let p = Project::new(TWO);
    let out = p.run(&["run", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("unknown target `nope`"),
        "{}",
        text(&out.stderr)
    );
    let out = p.run(&["run", "--set", "a.cmd=3"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--set:1:7: param `cmd` of stage `a`: expected a string"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        p.run(&["run", "--frobnicate"]).status.code(),
        Some(2),
        "clap usage errors exit 2"
    );

    let p = Project::new(
        "[stage.bad]\nkind = \"command\"\nparams = { cmd = \"echo oops >&2; exit 3\" }\n",
    );
    let out = p.run(&["run"]);
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out.stderr);
    assert!(
        e.contains("exited with exit status: 3") && e.contains("oops"),
        "{e}"
    );
    assert!(p.committed().is_empty());
}

#[test]
fn verify_reports_a_corrupted_artifact() {
    let p = Project::new(TWO);
    assert!(p.run(&["run", "b"]).status.success());
    let cell = p
        .committed()
        .into_iter()
        .find(|d| std::fs::read_to_string(d.join("n.txt")).is_ok_and(|s| s.trim() == "6"))
        .unwrap();
    std::fs::write(cell.join("n.txt"), "7\n").unwrap();
    let out = p.run(&["verify"]);
    assert_eq!(out.status.code(), Some(1));
    let s = text(&out.stdout);
    assert!(
        s.contains("DAMAGED") && s.contains("n.txt") && s.contains("content changed"),
        "{s}"
    );
}

/// A 40-step job that checkpoints each step into its scratch dir and resumes from the last one.
const RESUMABLE: &str = r#"
[stage.long]
kind = "command"
params = { cmd = "first=''; for i in $(seq 1 40); do if [ ! -f $SPO_SCRATCH/step$i ]; then [ -z \"$first\" ] && first=$i; sleep 0.05; touch $SPO_SCRATCH/step$i; fi; done; echo ${first:-done} > $SPO_OUT/resumed_from" }
"#;

fn steps_done(p: &Project) -> usize {
    let scratch = p.path().join("runs/scratch");
    std::fs::read_dir(&scratch)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| {
                    std::fs::read_dir(e.path())
                        .map(|s| {
                            s.filter_map(Result::ok)
                                .filter(|f| f.file_name().to_string_lossy().starts_with("step"))
                                .count()
                        })
                        .unwrap_or(0)
                })
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn kill_9_mid_stage_then_rerun_resumes_from_the_checkpoint() {
    let p = Project::new(RESUMABLE);
    let mut child = bin()
        .args(["run"])
        .current_dir(p.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while steps_done(&p) < 5 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the stage never made progress"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let after_kill = steps_done(&p);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        steps_done(&p),
        after_kill,
        "the command died with spo-pipe (no orphan kept working)"
    );
    assert!(p.committed().is_empty(), "a killed attempt commits nothing");
    assert!(
        std::fs::read_dir(p.path().join("runs/staging"))
            .unwrap()
            .count()
            > 0,
        "its staging dir is left behind"
    );

    let out = p.run(&["run"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_dir(p.path().join("runs/staging"))
            .unwrap()
            .count(),
        0,
        "the leftover is swept"
    );
    let cell = p.committed().pop().unwrap();
    let resumed: usize = std::fs::read_to_string(cell.join("resumed_from"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        resumed > 5 && resumed == after_kill + 1,
        "resumed at step {resumed} after {after_kill} steps"
    );
    assert!(
        !p.path()
            .join("runs/scratch")
            .read_dir()
            .unwrap()
            .any(|_| true),
        "checkpoints go once committed"
    );
    assert!(p.run(&["verify"]).status.success());
}

#[test]
fn two_concurrent_runs_compute_each_cell_once() {
    let log = tempfile::NamedTempFile::new().unwrap();
    let lp = log.path().display().to_string();
    let pipe = format!(
        r#"
[stage.x]
kind = "command"
params = {{ cmd = "echo x >> {lp}; sleep 0.4; echo x > $SPO_OUT/o" }}
[stage.y]
kind = "command"
params = {{ cmd = "echo y >> {lp}; sleep 0.4; echo y > $SPO_OUT/o" }}
[stage.z]
kind = "command"
needs = ["x", "y"]
params = {{ cmd = "echo z >> {lp}; cat $SPO_INPUT_X/o $SPO_INPUT_Y/o > $SPO_OUT/o" }}
"#
    );
    let p = Project::new(&pipe);
    let spawn = |jobs: &str| {
        bin()
            .args(["run", "z", "--jobs", jobs])
            .current_dir(p.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (c1, c2) = (spawn("2"), spawn("1"));
    let (o1, o2) = (
        c1.wait_with_output().unwrap(),
        c2.wait_with_output().unwrap(),
    );
    assert!(
        o1.status.success() && o2.status.success(),
        "{}\n{}",
        text(&o1.stderr),
        text(&o2.stderr)
    );
    let mut lines: Vec<String> = std::fs::read_to_string(log.path())
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    lines.sort();
    assert_eq!(
        lines,
        ["x", "y", "z"],
        "every cell ran exactly once across both processes"
    );
    assert_eq!(p.committed().len(), 3);
    assert!(p.run(&["verify"]).status.success());
}

#[test]
fn tables_name_missing_cells_and_diff_compares_seeds() {
    let pipe = r#"
[pipeline]
seeds = [1, 2, 3]
[stage.base]
kind = "command"
params = { cmd = "echo '{\"acc\": 0.5}' > $SPO_OUT/metrics.json" }
[stage.train]
kind = "command"
needs = ["base"]
params = { cmd = "echo '{\"acc\": 0.6}' > $SPO_OUT/metrics.json" }
[table.t2]
title = "Table 2"
rows = { Base = "base", Trained = "train" }
metrics = ["acc"]
"#;
    let p = Project::new(pipe);
    let out = p.run(&["tables"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("compute them with: spo-pipe run t2"),
        "{}",
        text(&out.stderr)
    );
    assert!(p.run(&["run", "t2"]).status.success());
    let out = p.run(&["tables", "--format", "md"]);
    assert!(out.status.success());
    let s = text(&out.stdout);
    assert!(
        s.contains("| Base | 0.500 |") && s.contains("| Trained | **0.600** |"),
        "{s}"
    );
    // unseeded stages: one run behind each cell, whatever the pipeline's seeds
    assert!(s.contains("one run per cell; best in bold"), "{s}");
    let out = p.run(&["diff", "base", "train", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let delta = v["metrics"][0]["delta"].as_f64().unwrap();
    assert!((delta - 0.1).abs() < 1e-12, "{v}");
    assert!(v["params"].as_object().unwrap().contains_key("train.cmd"));
    let out = p.run(&["diff", "base", "train"]);
    let s = text(&out.stdout);
    assert!(
        s.contains("stage `train`: only in B (2 params)") && !s.contains("train.cmd"),
        "a stage upstream of one side only is one line: {s}"
    );
}

#[test]
fn dry_run_says_what_and_why_and_gc_drops_unreached_cells() {
    let p = Project::new(TWO);
    let out = p.run(&["run", "--dry-run", "b"]);
    assert!(
        text(&out.stdout).contains("2 of 2 cells would run"),
        "{}",
        text(&out.stdout)
    );
    assert!(p.committed().is_empty());
    assert!(p.run(&["run", "b"]).status.success());
    let out = p.run(&[
        "run",
        "-n",
        "b",
        "--set",
        "a.cmd=\"echo 5 > $SPO_OUT/n.txt\"",
    ]);
    let s = text(&out.stdout);
    assert!(s.contains("would run  a  (param cmd:"), "{s}");
    assert!(
        p.run(&["run", "b", "--set", "a.cmd=\"echo 5 > $SPO_OUT/n.txt\""])
            .status
            .success()
    );
    assert_eq!(p.committed().len(), 4);
    let out = p.run(&["gc", "--dry-run"]);
    assert!(
        text(&out.stdout).contains("would remove 2 cells"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(p.committed().len(), 4);
    assert!(p.run(&["gc"]).status.success());
    assert_eq!(p.committed().len(), 2);
}

/// `spo-pipe score` with the tiny random-weight PickScore of the spo-clip fixtures, against the
/// values transformers computed for the same photographs (tests/fixtures/clip/goldens).
#[test]
fn score_a_folder_of_images_into_parquet() {
    use arrow_array::cast::AsArray;
    use arrow_array::types::Float64Type;
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip");
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    for f in ["astronaut_crop.png", "coffee_crop.png"] {
        std::fs::copy(fixtures.join("images").join(f), images.join(f)).unwrap();
    }
    let prompts = dir.path().join("prompts.txt");
    std::fs::write(
        &prompts,
        "a photo of an astronaut riding a horse on the moon\n".repeat(2),
    )
    .unwrap();
    let out = dir.path().join("scores.parquet");
    let weights = fixtures.join("models/pickscore_tiny");
    let run = |extra: &[&std::path::Path]| {
        let mut c = bin();
        c.args(["score", "--metric", "pickscore", "--weights"])
            .arg(&weights)
            .arg("--images")
            .arg(&images)
            .arg("--out")
            .arg(&out);
        for (flag, p) in ["--prompts"].iter().zip(extra) {
            c.arg(flag).arg(p);
        }
        c.output().unwrap()
    };
    let res = run(&[&prompts]);
    assert!(res.status.success(), "{}", text(&res.stderr));
    let file = std::fs::File::open(&out).unwrap();
    let mut reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let batch = reader.next().unwrap().unwrap();
    let scores: Vec<f64> = batch
        .column_by_name("pickscore")
        .unwrap()
        .as_primitive::<Float64Type>()
        .values()
        .to_vec();
    // transformers' exp(logit_scale)·cos for (astronaut, prompt 0) and (coffee, prompt 0).
    for (got, want) in scores.iter().zip([-41.59535217285156, -42.748985290527344]) {
        assert!((got - want).abs() < 5e-4 * want.abs(), "{scores:?}");
    }

    let res = run(&[]);
    assert_eq!(res.status.code(), Some(2));
    assert!(
        text(&res.stderr).contains("needs a prompt per image"),
        "{}",
        text(&res.stderr)
    );
    std::fs::write(images.join("broken.png"), b"not a png").unwrap();
    let res = run(&[&prompts]);
    assert_eq!(res.status.code(), Some(1));
    assert!(
        text(&res.stderr).contains("broken.png: not a decodable image"),
        "{}",
        text(&res.stderr)
    );
}

/// A sweep past the merge threshold leaves one run-index file; a no-op run adds no row; a copy
/// of the merged file (a merge killed before removing its sources) changes no table, and `gc`
/// merges it away.
#[test]
fn the_run_index_is_merged_and_reads_the_same_with_duplicates() {
    let values: Vec<String> = (0..150)
        .map(|i| format!("\"echo {i} > $SPO_OUT/o\""))
        .collect();
    let p = Project::new(&format!(
        r#"
[stage.gen]
kind = "command"
params = {{ cmd = "echo 0 > $SPO_OUT/o" }}
[stage.post]
kind = "command"
needs = ["gen"]
params = {{ cmd = "echo '{{\"v\": 1}}' > $SPO_OUT/metrics.json" }}
[sweep.many]
stage = "gen"
grid = {{ cmd = [{}] }}
[table.t]
sweep = "many"
stage = "post"
metrics = ["v"]
"#,
        values.join(", ")
    ));
    let index = p.path().join("runs/index");
    let files = || {
        let mut f: Vec<_> = std::fs::read_dir(&index)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
            .collect();
        f.sort();
        f
    };
    let out = p.run(&["run", "many"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(files().len(), 1, "300 rows merged into one file");
    let table = p.run(&["tables", "t"]);
    assert!(table.status.success(), "{}", text(&table.stderr));

    let out = p.run(&["run", "many"]);
    assert!(text(&out.stderr).contains("300 cells: 0 ran, 300 cached"));
    assert_eq!(files().len(), 1, "a no-op run adds no row");

    std::fs::copy(&files()[0], index.join("copy.parquet")).unwrap();
    let again = p.run(&["tables", "t"]);
    assert_eq!(text(&again.stdout), text(&table.stdout));
    let out = p.run(&["gc"]);
    assert!(
        text(&out.stdout).contains("merged 2 run-index files into one"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(files().len(), 1);
    assert_eq!(text(&p.run(&["tables", "t"]).stdout), text(&table.stdout));
}

#[test]
fn a_reader_that_goes_away_ends_a_listing_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let p = Project::new(TWO);
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    for verb in [&["kinds"][..], &["dag"], &["status"]] {
        let out = bin()
            .args(verb)
            .current_dir(p.path())
            .stdout(writer.try_clone().unwrap())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let e = text(&out.stderr);
        assert!(!e.contains("panicked"), "{verb:?}: {e}");
        assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{verb:?}: {e}");
    }
}

#[test]
fn a_cell_deleted_behind_the_stores_back_is_named_as_such_and_rerun() {
    let p = Project::new(TWO);
    assert!(p.run(&["run", "-q"]).status.success());
    let show = text(&p.run(&["show", "a"]).stdout);
    let key = show
        .lines()
        .find_map(|l| l.strip_prefix("key"))
        .map(str::trim)
        .expect("a key line")
        .to_owned();
    std::fs::remove_dir_all(p.path().join("runs/store").join(&key)).unwrap();
    let status = text(&p.run(&["status"]).stdout);
    let line = status
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("a"))
        .expect("a's line");
    assert!(
        line.starts_with("stale") && line.contains("no longer in the store"),
        "{status}"
    );
    let why = text(&p.run(&["why", "a"]).stdout);
    assert!(
        why.contains(&format!("its output {} is no longer", &key[..12])),
        "{why}"
    );
    assert!(p.run(&["run", "-q"]).status.success());
    assert!(
        p.path()
            .join("runs/store")
            .join(&key)
            .join("n.txt")
            .is_file()
    );
    assert!(text(&p.run(&["status"]).stdout).contains("2 cached, 0 stale, 0 missing"));
}

#[test]
fn pin_writes_a_hub_stage_from_a_snapshot_folder() {
    use sha2::{Digest, Sha256};
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snapshot");
    std::fs::create_dir_all(snap.join("unet")).unwrap();
    std::fs::create_dir_all(snap.join(".cache/huggingface")).unwrap();
    std::fs::write(snap.join("unet/config.json"), b"{\"in_channels\": 4}").unwrap();
    std::fs::write(snap.join("unet/model.fp16.safetensors"), b"half").unwrap();
    std::fs::write(snap.join(".cache/huggingface/x.lock"), b"").unwrap();
    // The hub cache's snapshot folders link each file to a blob.
    let blob = dir.path().join("blob");
    std::fs::write(&blob, b"{\"_class_name\": \"StableDiffusionPipeline\"}").unwrap();
    std::os::unix::fs::symlink(&blob, snap.join("model_index.json")).unwrap();
    let rev = "0123456789abcdef0123456789abcdef01234567";
    let snap_arg = snap.to_str().unwrap();
    let args = [
        "pin",
        snap_arg,
        "--repo",
        "org/sd",
        "--revision",
        rev,
        "--exclude",
        ".fp16.",
    ];
    let out = bin().args(args).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stage = text(&out.stdout);
    let sha = |b: &[u8]| hex::encode(Sha256::digest(b));
    let blob_sha = sha(&std::fs::read(&blob).unwrap());
    let config_sha = sha(b"{\"in_channels\": 4}");
    // Sorted by path, the symlink followed, hidden and excluded files left out.
    let files = stage
        .find("\"model_index.json\"")
        .zip(stage.find("\"unet/config.json\""));
    assert!(matches!(files, Some((a, b)) if a < b), "{stage}");
    let digests = stage.find(&blob_sha).zip(stage.find(&config_sha));
    assert!(matches!(digests, Some((a, b)) if a < b), "{stage}");
    assert!(
        !stage.contains("fp16") && !stage.contains(".cache"),
        "{stage}"
    );
    // The printed stage is a valid `hub` stage of a pipeline.
    let p = Project::new(&stage);
    let out = p.run(&["dag"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // With --local the stage copies the files from the folder when it runs (no hub needed),
    // checked against the same digests; a file changed since pinning stores nothing.
    let mut local_args = args.to_vec();
    local_args.push("--local");
    let out = bin().args(&local_args).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let local_stage = text(&out.stdout);
    let p = Project::new(&local_stage);
    let out = p.run(&["run"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stored: Vec<_> = support::walk(&p.path().join("runs/store"))
        .into_iter()
        .filter(|f| f.ends_with("unet/config.json"))
        .collect();
    assert_eq!(stored.len(), 1);
    assert_eq!(std::fs::read(&stored[0]).unwrap(), b"{\"in_channels\": 4}");
    std::fs::write(snap.join("unet/config.json"), b"{\"in_channels\": 8}").unwrap();
    let p = Project::new(&local_stage);
    let out = p.run(&["run"]);
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out.stderr);
    assert!(
        e.contains("unet/config.json") && e.contains("sha256 mismatch"),
        "{e}"
    );
    std::fs::remove_file(snap.join("unet/config.json")).unwrap();
    let p = Project::new(&local_stage);
    let out = p.run(&["run"]);
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out.stderr);
    assert!(
        e.contains("unet/config.json") && e.contains("not in the local copy"),
        "{e}"
    );

    let out = bin()
        .args(["pin", snap_arg, "--repo", "org/sd", "--revision", "main"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("40 hex digits"),
        "{}",
        text(&out.stderr)
    );
    let out = bin()
        .args([
            "pin",
            "/nonexistent/snap",
            "--repo",
            "org/sd",
            "--revision",
            rev,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("not a folder"),
        "{}",
        text(&out.stderr)
    );
}

/// A `prompts` stage of two prompts, for the real-weights stages.
const PROMPTS: &str = r#"[stage.prompt-file]
kind = "command"
params = { cmd = "printf 'a photo of a cat\na red cube\n' > $SPO_OUT/prompts.txt" }

[stage.prompts]
kind = "prompts"
needs = ["prompt-file"]
params = { format = "lines" }
"#;

/// The `hub` stage `pin --local` writes for the fixture folder `fixture`, and its name.
fn pinned(fixture: &str, repo: &str) -> (String, String) {
    let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(fixture);
    let rev = "0123456789abcdef0123456789abcdef01234567";
    let out = bin()
        .args([
            "pin",
            folder.to_str().unwrap(),
            "--repo",
            repo,
            "--revision",
            rev,
            "--local",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let hub = text(&out.stdout);
    let name = hub
        .lines()
        .find_map(|l| l.strip_prefix("[stage.")?.strip_suffix(']'))
        .unwrap()
        .to_owned();
    (hub, name)
}

/// [`pinned`]'s stage under the name `stage`.
fn pinned_as(fixture: &str, repo: &str, stage: &str) -> String {
    let (hub, name) = pinned(fixture, repo);
    hub.replace(&format!("[stage.{name}"), &format!("[stage.{stage}"))
}

/// Every training method checks its memory on real weights before it loads a weight: under
/// `--device-memory 16K` each of D3PO, DDPO, Diffusion-DPO and MaPO is refused naming the
/// stage, its need and what to lower, and stores nothing; the same cells then train.
#[test]
fn every_training_method_on_real_weights_is_memory_checked() {
    let sd = pinned_as("sd/sd15_tiny", "org/sd15", "sd15");
    let pick = pinned_as("clip/models/pickscore_tiny", "org/pickscore", "pickscore");
    let online = "needs = [\"sd15\", \"prompts\", \"pickscore\"]\n\
         params = { rounds = 1, prompts = 1, steps = 2, train_batch = 2, snapshots = 0 }";
    let offline = "needs = [\"sd15\", \"pairs\"]\nparams = { steps = 1, batch = 1, warmup = 0, snapshots = 0 }";
    let pipeline = format!(
        r#"{sd}
{pick}
{PROMPTS}
[stage.pairs]
kind = "world"
params = {{ train_prompts = 4, validation_prompts = 2 }}

[stage.d3po]
kind = "d3po"
{online}

[stage.ddpo]
kind = "ddpo"
{online}

[stage.dpo]
kind = "diffusion-dpo"
{offline}

[stage.mapo]
kind = "mapo"
{offline}
"#
    );
    let p = Project::new(&pipeline);
    refused_then_run(
        &p,
        &["d3po", "ddpo", "dpo", "mapo"],
        "16K",
        &["gradient_checkpointing", "activations"],
        ("lora.safetensors", 4),
    );
}

/// Each of `stages`, run alone with `--device-memory small`, is refused naming the stage, its
/// need and each of `needles`, and no cell holding `file` is stored; then the whole pipeline
/// runs with 4G and `count` cells hold one.
fn refused_then_run(
    p: &Project,
    stages: &[&str],
    small: &str,
    needles: &[&str],
    (file, count): (&str, usize),
) {
    let stored = || {
        p.committed()
            .iter()
            .filter(|d| d.join(file).is_file())
            .count()
    };
    for stage in stages {
        let out = p.run(&["--device-memory", small, "run", stage]);
        let e = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stage}: {e}");
        assert!(
            e.contains(&format!("stage `{stage}` needs about"))
                && needles.iter().all(|n| e.contains(n)),
            "{stage}: {e}"
        );
        assert_eq!(stored(), 0, "{stage}: a refused cell stores nothing");
    }
    let out = p.run(&["--device-memory", "4G", "run"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(stored(), count);
}

/// `[executor.stage.NAME] device`: a name that is no device is a config error naming the key;
/// a device this build cannot open (CUDA on a CPU build) is a usage error naming the cell before
/// anything runs; the run's own device runs here, and the device is in no key.
#[test]
fn a_stage_of_its_own_device_is_checked_before_anything_runs() {
    let pipeline = |device: &str| {
        format!(
            "[stage.a]\nkind = \"command\"\nparams = {{ cmd = \"echo 1 > $SPO_OUT/a.txt\" }}\n\n\
             [stage.b]\nkind = \"command\"\nneeds = [\"a\"]\nparams = {{ cmd = \"cat $SPO_INPUT_A/a.txt > $SPO_OUT/b.txt\" }}\n\
             {device}"
        )
    };
    let p = Project::new(&pipeline("[executor.stage.b]\ndevice = \"gpu\"\n"));
    let out = p.run(&["run"]);
    let e = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{e}");
    assert!(
        e.contains("executor.stage.b.device") && e.contains("not a device"),
        "{e}"
    );
    if !cfg!(feature = "cuda") {
        let p = Project::new(&pipeline("[executor.stage.b]\ndevice = \"cuda:1\"\n"));
        let out = p.run(&["run"]);
        let e = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{e}");
        assert!(
            e.contains("b asks for device cuda:1") && e.contains("without CUDA"),
            "{e}"
        );
        assert!(p.committed().is_empty(), "nothing ran");
    }
    let keys = |device: &str| {
        let p = Project::new(&pipeline(device));
        let out = p.run(&["--device", "cpu", "run"]);
        let e = text(&out.stderr);
        assert!(out.status.success(), "{e}");
        assert!(
            !e.contains("child spo-pipe"),
            "the run's own device runs here: {e}"
        );
        let mut k: Vec<String> = p
            .committed()
            .iter()
            .map(|d| d.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        k.sort();
        k
    };
    assert_eq!(keys("[executor.stage.b]\ndevice = \"cpu\"\n"), keys(""));
}

/// Every real scorer checks its memory before it reads a weight: under a limit between the
/// sampling cell's need and the scorer's, each `sd-score` cell (PickScore, HPSv2, ImageReward)
/// is refused naming the stage, its need and the batch param, and stores nothing; with room it
/// scores and records its estimate, which grows with the batch.
#[test]
fn every_real_scorer_is_memory_checked() {
    let sd = pinned_as("sd/sd15_tiny", "org/sd15", "sd15");
    let pick = pinned_as(
        "clip/models/pickscore_tiny",
        "org/pickscore",
        "pick-weights",
    );
    let hps = pinned_as("clip/models/hps_tiny", "org/hps", "hps-weights");
    let ir = pinned_as("clip/models/imagereward_tiny", "org/ir", "ir-weights");
    let score = |name: &str, weights: &str, params: &str| {
        format!(
            "[stage.{name}]\nkind = \"sd-score\"\nneeds = [\"sample\", \"{weights}\"]\nparams = {{ {params} }}\n"
        )
    };
    let pipeline = format!(
        r#"{sd}
{pick}
{hps}
{ir}
{PROMPTS}
[stage.sample]
kind = "sd-sample"
needs = ["sd15", "prompts"]
params = {{ steps = 2, batch = 2 }}
{}{}{}{}"#,
        score("pick", "pick-weights", "metric = \"pickscore\", batch = 2"),
        score(
            "pick-wide",
            "pick-weights",
            "metric = \"pickscore\", batch = 64"
        ),
        score(
            "hps",
            "hps-weights",
            "metric = \"hpsv2\", file = \"hps_tiny.pt\", batch = 2"
        ),
        score("ir", "ir-weights", "metric = \"imagereward\", batch = 2"),
    );
    let p = Project::new(&pipeline);
    let out = p.run(&["run", "sample"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    refused_then_run(
        &p,
        &["pick", "hps", "ir"],
        "64K",
        &["weights", "lower the batch param"],
        ("scores.parquet", 4),
    );
    let estimate = |stage: &str| -> f64 {
        let out = p.run(&["show", stage, "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("show --json");
        v["metrics"]["memory_estimate_gib"]
            .as_f64()
            .unwrap_or_else(|| panic!("{stage}: {v}"))
    };
    let (narrow, wide) = (estimate("pick"), estimate("pick-wide"));
    assert!(narrow > 0.0 && wide > narrow, "{narrow} {wide}");
}

/// `--device`, `--device-memory` and `precision` on the real-weights path, with the tiny
/// SD-1.5 folder copied in by a `pin --local` hub stage: an unusable device or size is a usage
/// error before anything runs; a cell whose estimated memory exceeds the limit is refused
/// before it loads a weight, naming its need; bf16 on the CPU is refused naming the param;
/// f16 and f32 cells are different cells (the precision is in the key), the device is not.
#[test]
fn device_memory_and_precision_are_checked_before_a_cell_runs() {
    let (hub, name) = pinned("sd/sd15_tiny", "org/sd15");
    let pipeline = format!(
        r#"{hub}
{PROMPTS}
[stage.sample]
kind = "sd-sample"
needs = ["{name}", "prompts"]
params = {{ steps = 2, batch = 2 }}
"#
    );
    let p = Project::new(&pipeline);
    for (args, says) in [
        (&["--device", "gpu", "run"][..], "not a device"),
        (&["--device-memory", "lots", "run"][..], "not a memory size"),
    ] {
        let out = p.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(text(&out.stderr).contains(says), "{}", text(&out.stderr));
    }
    // exported but empty: unset
    let out = p.run(&["--device", "", "--device-memory", "", "dag"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = p.run(&["--device-memory", "16K", "run", "sample"]);
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out.stderr);
    assert!(
        e.contains("stage `sample` needs about")
            && e.contains("--device-memory")
            && e.contains("activations"),
        "{e}"
    );
    let sampled = || {
        p.committed()
            .iter()
            .filter(|d| d.join("samples.parquet").is_file())
            .count()
    };
    assert_eq!(sampled(), 0, "a refused cell stores nothing");

    let out = p.run(&["run", "sample", "--set", "sample.precision=\"bf16\""]);
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out.stderr);
    assert!(
        e.contains("precision") && e.contains("bf16 needs a CUDA device"),
        "{e}"
    );

    let out = p.run(&["--device", "cpu", "--device-memory", "4G", "run", "sample"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(sampled(), 1);
    // the device is not in the key: the same cell, cached
    let out = p.run(&["run", "sample"]);
    assert!(text(&out.stderr).contains("0 ran"), "{}", text(&out.stderr));
    let out = p.run(&["run", "sample", "--set", "sample.precision=\"f32\""]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(sampled(), 2, "f32 is another cell");
}
