//! `run --executor slurm` against a real single-node Slurm cluster on this machine
//! (`scripts/install-slurm.sh` installs and starts it; these tests skip, saying so, where no
//! cluster answers). The store is on a local disk here; on a cluster it is the shared one.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{Project, bin, text};

/// `SLURM_CONF` of the cluster `scripts/install-slurm.sh` started, if the tools are here and
/// it answers; otherwise says why and returns `None`.
fn cluster() -> Option<Option<PathBuf>> {
    let conf = std::env::var_os("SPO_SLURM_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/spo-pipe/slurm"))
        })
        .map(|d| d.join("slurm.conf"))
        .filter(|c| c.is_file() && std::env::var_os("SLURM_CONF").is_none());
    let mut sinfo = Command::new("sinfo");
    sinfo.args(["-h", "-o", "%T"]);
    if let Some(c) = &conf {
        sinfo.env("SLURM_CONF", c);
    }
    match sinfo.output() {
        Ok(o)
            if o.status.success()
                && (text(&o.stdout).contains("idle") || text(&o.stdout).contains("mix")) =>
        {
            Some(conf)
        }
        Ok(o) => {
            eprintln!(
                "SKIP: no idle Slurm node answers (sinfo: {}{}); run scripts/install-slurm.sh",
                text(&o.stdout).trim(),
                text(&o.stderr).trim()
            );
            None
        }
        Err(e) => {
            eprintln!("SKIP: no sinfo here ({e}); run scripts/install-slurm.sh");
            None
        }
    }
}

fn spo(p: &Project, conf: &Option<PathBuf>, args: &[&str]) -> Command {
    let mut c = bin();
    c.args(args).current_dir(p.path());
    if let Some(conf) = conf {
        c.env("SLURM_CONF", conf);
    }
    // Tests poll fast; the default starts at 1 s.
    c.env("SPO_PIPE_SLURM_POLL", "0.2")
        .env("SPO_PIPE_SLURM_POLL_MAX", "1");
    c
}

fn run(p: &Project, conf: &Option<PathBuf>, args: &[&str]) -> Output {
    spo(p, conf, args).output().unwrap()
}

/// A data cell, a three-value sweep of a cell reading it, and a cell reading all three; each
/// cell appends its name to a log outside the store.
fn pipeline(log: &Path) -> String {
    let log = log.display();
    format!(
        r#"
[executor]
kind = "slurm"
cpus = 1
mem = "100M"
time = "5:00"

[stage.data]
kind = "command"
params = {{ cmd = "echo data >> {log} && seq 10 > $SPO_OUT/d.txt" }}
[stage.train]
kind = "command"
needs = ["data"]
params = {{ cmd = "echo 0 >> {log}" }}
[stage.report]
kind = "command"
needs = ["train"]
params = {{ cmd = "echo report >> {log} && cat $SPO_INPUT_TRAIN/o > $SPO_OUT/o" }}

[sweep.k]
stage = "train"
grid = {{ cmd = ["echo 1 >> {log} && echo 1 > $SPO_OUT/o", "echo 2 >> {log} && echo 2 > $SPO_OUT/o", "echo 3 >> {log} && echo 3 > $SPO_OUT/o"] }}
"#
    )
}

fn lines(log: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    v.sort();
    v
}

#[test]
fn a_sweep_runs_as_slurm_jobs_each_cell_once() {
    let Some(conf) = cluster() else { return };
    let p = Project::new("");
    let log = p.path().join("computed.log");
    std::fs::write(p.path().join("pipeline.toml"), pipeline(&log)).unwrap();
    let out = run(&p, &conf, &["run", "k"]);
    let e = text(&out.stderr);
    assert!(out.status.success(), "{e}");
    assert!(
        e.contains("7 cells: 7 ran as Slurm jobs, 0 cached, 0 failed"),
        "{e}"
    );
    assert!(e.contains("⇢ queued   data  job "), "{e}");
    // The three cells of the sweep, ready together, went as one job array.
    assert!(e.contains("⇢ array    3 cells as job array "), "{e}");
    assert!(e.contains("_2  "), "{e}");
    // The sweep fans out downstream: data, three train and three report cells.
    assert_eq!(
        lines(&log),
        ["1", "2", "3", "data", "report", "report", "report"]
    );
    // Each job's log is in the store, named by the cell's key and the job id.
    let logs: Vec<_> = std::fs::read_dir(p.path().join("runs/logs/slurm"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".log") && !n.ends_with(".wrapper.log"))
        .collect();
    assert_eq!(logs.len(), 7, "{logs:?}");
    let v = run(&p, &conf, &["verify"]);
    assert!(
        text(&v.stdout).contains("verified 7 cells: 0 damaged"),
        "{}",
        text(&v.stdout)
    );
    // Everything is in the store: nothing is submitted.
    let out = run(&p, &conf, &["run", "k"]);
    let e = text(&out.stderr);
    assert!(e.contains("7 cells: 0 ran as Slurm jobs, 7 cached"), "{e}");
    assert!(e.contains("0 squeue queries"), "{e}");
    assert_eq!(lines(&log).len(), 7);
    // Cells found in the store get their index rows back, as in a local run.
    let index = p.path().join("runs/index");
    let rows = || std::fs::read_dir(&index).map_or(0, |d| d.count());
    assert_eq!(rows(), 7, "one row per job");
    std::fs::remove_dir_all(&index).unwrap();
    let out = run(&p, &conf, &["run", "k"]);
    assert!(
        text(&out.stderr).contains("7 cached"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(rows(), 7, "the index rows of the cached cells");
    assert_eq!(lines(&log).len(), 7);
    // A failing cell: the job ends without a commit, its log tail is shown, downstream skipped.
    let out = run(
        &p,
        &conf,
        &[
            "run",
            "report",
            "--set",
            "train.cmd=\"echo boom-from-the-job >&2; exit 3\"",
        ],
    );
    let e = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(
        e.contains("without committing") && e.contains("boom-from-the-job"),
        "{e}"
    );
    assert!(e.contains("- skipped  report"), "{e}");
}

#[test]
fn ctrl_c_cancels_the_runs_jobs_and_commits_nothing() {
    let Some(conf) = cluster() else { return };
    for signal in [libc::SIGINT, libc::SIGTERM] {
        interrupt_a_running_job(&conf, signal);
    }
}

fn interrupt_a_running_job(conf: &Option<PathBuf>, signal: i32) {
    let conf = conf.clone();
    let p = Project::new("");
    let log = p.path().join("computed.log");
    let long = format!(
        "[stage.slow]\nkind = \"command\"\nparams = {{ cmd = \"echo started >> {} && sleep 60 && echo x > $SPO_OUT/o\" }}\n",
        log.display()
    );
    std::fs::write(p.path().join("pipeline.toml"), long).unwrap();
    let child = spo(&p, &conf, &["run", "slow", "--executor", "slurm"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the job runs (its command wrote the log).
    let t0 = Instant::now();
    while !log.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the job never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // `status` shows the cell running, with its job.
    let st = run(&p, &conf, &["status", "slow"]);
    let so = text(&st.stdout);
    assert!(
        so.starts_with("running  slow") && so.contains("slurm job "),
        "{so}"
    );
    assert!(
        so.contains("of which 0 queued and 1 running as Slurm jobs"),
        "{so}"
    );
    // SAFETY: kill(2) of our own child, which has not been waited for.
    unsafe { libc::kill(child.id() as i32, signal) };
    let out = child.wait_with_output().unwrap();
    let e = text(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{e}");
    assert!(
        e.contains("interrupted: cancelled the run's 1 unfinished jobs"),
        "{e}"
    );
    // The job is cancelled (not running), and nothing was committed.
    let mut sq = Command::new("squeue");
    sq.args(["-h", "--states=all", "-o", "%T", "-n"]);
    let name = e
        .split("scancel --name ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .unwrap()
        .to_owned();
    sq.arg(&name);
    if let Some(c) = &conf {
        sq.env("SLURM_CONF", c);
    }
    let t0 = Instant::now();
    loop {
        let states = text(&sq.output().unwrap().stdout);
        if !states.contains("RUNNING") && !states.contains("COMPLETING") {
            assert!(
                states.trim().is_empty() || states.contains("CANCELLED"),
                "{states}"
            );
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "still running: {states}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(p.committed().is_empty());
}

/// A job killed mid-stage (scancel of that job alone) is retried: the next job resumes the cell
/// from the checkpoint the first left in the store's scratch directory.
#[test]
fn a_job_killed_mid_stage_is_retried_and_resumes_from_its_checkpoint() {
    let Some(conf) = cluster() else { return };
    let p = Project::new("");
    let log = p.path().join("computed.log");
    let pipe = format!(
        r#"
[executor]
kind = "slurm"
retries = 1
[stage.ckpt]
kind = "command"
params = {{ cmd = "if [ -f $SPO_SCRATCH/half ]; then echo resumed >> {log}; else echo fresh >> {log} && echo 21 > $SPO_SCRATCH/half && sleep 60; fi; echo $(( $(cat $SPO_SCRATCH/half) * 2 )) > $SPO_OUT/o" }}
"#,
        log = log.display()
    );
    std::fs::write(p.path().join("pipeline.toml"), pipe).unwrap();
    let child = spo(&p, &conf, &["run", "ckpt"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !log.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the job never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The running job of this cell (its comment is the cell's label), and only it.
    let mut sq = Command::new("squeue");
    sq.args(["-h", "-t", "RUNNING", "-o", "%i|%k"]);
    if let Some(c) = &conf {
        sq.env("SLURM_CONF", c);
    }
    let listing = text(&sq.output().unwrap().stdout);
    let job = listing
        .lines()
        .find_map(|l| l.strip_suffix("|ckpt"))
        .unwrap_or_else(|| panic!("no running job for ckpt in: {listing}"))
        .to_owned();
    let mut sc = Command::new("scancel");
    sc.arg(&job);
    if let Some(c) = &conf {
        sc.env("SLURM_CONF", c);
    }
    assert!(sc.status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    let e = text(&out.stderr);
    assert!(out.status.success(), "{e}");
    assert!(
        e.contains(&format!(
            "↻ retry    ckpt  job {job} ended CANCELLED; attempt 2 of 2"
        )),
        "{e}"
    );
    assert_eq!(lines(&log), ["fresh", "resumed"]);
    let cell = &p.committed()[0];
    assert_eq!(std::fs::read_to_string(cell.join("o")).unwrap(), "42\n");
}

#[test]
fn bad_executor_settings_are_refused_before_any_job() {
    let p = Project::new(
        "[executor]\nkind = \"slurm\"\ntime = \"1h\"\n[stage.a]\nkind = \"command\"\nparams = { cmd = \"true\" }\n",
    );
    let out = p.run(&["run", "a"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr)
            .contains("pipeline.toml:3:8: `executor.time`: `1h` is not a time limit Slurm reads"),
        "{}",
        text(&out.stderr)
    );
    let p = Project::new(
        "[executor]\nmem = \"4GB\"\n[stage.a]\nkind = \"command\"\nparams = { cmd = \"true\" }\n",
    );
    let out = p.run(&["run", "a"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("`executor.mem`: `4GB` is not a memory size"),
        "{}",
        text(&out.stderr)
    );
    let p = Project::new(
        "[executor.stage.nope]\ncpus = 2\n[stage.a]\nkind = \"command\"\nparams = { cmd = \"true\" }\n",
    );
    let out = p.run(&["run", "a"]);
    assert_eq!(out.status.code(), Some(2));
    let p2 = Project::new(
        "[executor.kind_defaults.comand]\ncpus = 2\n[stage.a]\nkind = \"command\"\nparams = { cmd = \"true\" }\n",
    );
    let out2 = p2.run(&["run", "a"]);
    assert_eq!(out2.status.code(), Some(2));
    assert!(
        text(&out2.stderr).contains("[executor.kind_defaults.comand] names no stage kind"),
        "{}",
        text(&out2.stderr)
    );
    assert!(
        text(&out.stderr).contains("[executor.stage.nope] names no stage"),
        "{}",
        text(&out.stderr)
    );

    for (line, message) in [
        (
            "arrays = \"yes\"",
            "`executor.arrays` must be true or false",
        ),
        (
            "retries = 11",
            "`executor.retries` must be an integer from 0 to 10",
        ),
        (
            "cpus = 0",
            "`executor.cpus` must be an integer from 1 to 4096",
        ),
        (
            "partition = \"a b\"",
            "is not a Slurm partition or account name",
        ),
    ] {
        let p = Project::new(&format!(
            "[executor]\n{line}\n[stage.a]\nkind = \"command\"\nparams = {{ cmd = \"true\" }}\n"
        ));
        let out = p.run(&["run", "a"]);
        assert_eq!(out.status.code(), Some(2), "{line}");
        assert!(
            text(&out.stderr).contains(message),
            "{line}: {}",
            text(&out.stderr)
        );
    }

    // No sbatch on PATH.
    let p = Project::new("[stage.a]\nkind = \"command\"\nparams = { cmd = \"true\" }\n");
    let out = bin()
        .args(["run", "a", "--executor", "slurm"])
        .current_dir(p.path())
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("the Slurm executor needs `sbatch` on PATH"),
        "{}",
        text(&out.stderr)
    );
    assert!(p.committed().is_empty());
}

/// Resources sbatch itself refuses (more memory than the node has): the error is sbatch's,
/// naming the cell; nothing runs, nothing is committed.
#[test]
fn a_job_sbatch_refuses_is_a_clear_error_naming_the_cell() {
    let Some(conf) = cluster() else { return };
    let p = Project::new(
        "[executor]\nkind = \"slurm\"\nmem = \"900T\"\n[stage.big]\nkind = \"command\"\nparams = { cmd = \"true\" }\n",
    );
    let out = run(&p, &conf, &["run", "big"]);
    let e = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(
        e.contains("error: big: sbatch refused the job: sbatch: error:"),
        "{e}"
    );
    assert!(
        e.contains("1 cells: 0 ran as Slurm jobs, 0 cached, 1 failed"),
        "{e}"
    );
    assert!(p.committed().is_empty());
}

#[test]
fn a_partition_that_does_not_exist_is_named_before_any_job() {
    let Some(conf) = cluster() else { return };
    let p = Project::new(
        "[executor]\nkind = \"slurm\"\npartition = \"nosuchpart\"\n[stage.a]\nkind = \"command\"\nparams = { cmd = \"true\" }\n",
    );
    let out = run(&p, &conf, &["run", "a"]);
    assert_eq!(out.status.code(), Some(2));
    let e = text(&out.stderr);
    assert!(
        e.contains(
            "[executor] partition `nosuchpart` (asked for by cell a) does not exist on this cluster (sinfo lists: debug"
        ),
        "{e}"
    );
    assert!(
        !p.path().join("runs/logs/slurm").exists()
            || std::fs::read_dir(p.path().join("runs/logs/slurm"))
                .unwrap()
                .next()
                .is_none()
    );
}

/// `[executor.cell."stage@param=value"]` reaches the one job of the cell it names: that job
/// runs with its CPUs, memory and time limit, the sweep's other cell with the file's defaults
/// (and so as a job of its own, not in one array with it).
#[test]
fn a_cell_table_sets_the_resources_of_that_cells_job_alone() {
    let Some(conf) = cluster() else { return };
    let p = Project::new("");
    // What Slurm gave the job, as the job sees it.
    let rec = "echo $SLURM_CPUS_PER_TASK $SLURM_MEM_PER_NODE $(squeue -h -j $SLURM_JOB_ID -o %l) > $SPO_OUT/o";
    let pipe = format!(
        r#"
[executor]
kind = "slurm"
cpus = 1
mem = "100M"
time = "5:00"
[executor.cell.'r@cmd="{rec} # big"']
cpus = 2
mem = "200M"
time = "7:00"

[stage.r]
kind = "command"
params = {{ cmd = "{rec} # small" }}
[sweep.s]
stage = "r"
grid = {{ cmd = ["{rec} # small", "{rec} # big"] }}
"#
    );
    std::fs::write(p.path().join("pipeline.toml"), pipe).unwrap();
    let out = run(&p, &conf, &["run", "s"]);
    let e = text(&out.stderr);
    assert!(out.status.success(), "{e}");
    assert!(
        e.contains("2 cells: 2 ran as Slurm jobs, 0 cached, 0 failed"),
        "{e}"
    );
    assert!(!e.contains("⇢ array"), "{e}");
    let mut got: Vec<String> = p
        .committed()
        .iter()
        .map(|c| {
            std::fs::read_to_string(c.join("o"))
                .unwrap()
                .trim()
                .to_owned()
        })
        .collect();
    got.sort();
    assert_eq!(got, ["1 100 5:00", "2 200 7:00"]);
}

/// Stand-ins for Slurm's tools in a directory put first on PATH: `sbatch` runs the job's
/// command in the background (or, for the submissions numbered in `oom.<n>` files, does not and
/// records it OUT_OF_MEMORY), `squeue` lists only running jobs (a finished one leaves at once,
/// as where MinJobAge is short), and `sacct` answers from the states `sbatch` and the jobs
/// recorded, or, with `accounting` false, as a cluster without accounting storage does.
fn fake_slurm(dir: &Path, accounting: bool) {
    let write = |name: &str, body: &str| {
        let path = dir.join(name);
        std::fs::write(
            &path,
            format!("#!/bin/sh\nd=\"$(dirname \"$0\")\"\n[ \"$1\" = --version ] && exit 0\n{body}"),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    write(
        "sbatch",
        r#"n=$(( $(cat "$d/n" 2>/dev/null || echo 0) + 1 )); echo $n > "$d/n"
id=$((4000 + n)); wrap=; out=
for a in "$@"; do
  printf '%s ' "$a" >> "$d/sbatch.args"
  case "$a" in --wrap=*) wrap="${a#--wrap=}";; --output=*) out="${a#--output=}";; esac
done
echo >> "$d/sbatch.args"
out=$(printf '%s' "$out" | sed "s/%j/$id/")
if [ -f "$d/oom.$n" ]; then
  echo "$id|OUT_OF_MEMORY|0:125" >> "$d/sacct.lines"
else
  echo "$id|RUNNING|0:0" >> "$d/sacct.lines"
  ( SLURM_JOB_ID=$id sh -c "$wrap" > "$out" 2>&1; rc=$?
    if [ $rc = 0 ]; then echo "$id|COMPLETED|0:0"; else echo "$id|FAILED|$rc:0"; fi >> "$d/sacct.lines"
  ) < /dev/null > /dev/null 2>&1 &
fi
echo "$id"
"#,
    );
    write(
        "squeue",
        r#"[ -f "$d/sacct.lines" ] || exit 0
awk -F'|' '{ s[$1] = $2 } END { for (i in s) if (s[i] == "RUNNING") print i "|RUNNING" }' "$d/sacct.lines"
"#,
    );
    write("scancel", "exit 0\n");
    if accounting {
        write(
            "sacct",
            r#"echo "$*" >> "$d/sacct.calls"
ids=; prev=; for a in "$@"; do [ "$prev" = -j ] && ids="$a"; prev="$a"; done
for id in $(echo "$ids" | tr , ' '); do grep "^$id|" "$d/sacct.lines"; done
exit 0
"#,
        );
    } else {
        write(
            "sacct",
            "echo \"$*\" >> \"$d/sacct.calls\"\necho 'Slurm accounting storage is disabled' >&2\nexit 1\n",
        );
    }
}

/// A cell that succeeds and one whose command fails (exit 3).
const TWO_CELLS: &str = r#"
[stage.r]
kind = "command"
params = { cmd = "echo ok > $SPO_OUT/o" }
[stage.f]
kind = "command"
params = { cmd = "echo failing >&2; exit 3" }
"#;

fn run_faked(p: &Project, fake: &Path, executor: &str) -> Output {
    std::fs::write(
        p.path().join("pipeline.toml"),
        format!("[executor]\nkind = \"slurm\"\narrays = false\n{executor}\n{TWO_CELLS}"),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        fake.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    bin()
        .args(["run", "r", "f"])
        .current_dir(p.path())
        .env("PATH", path)
        .env_remove("SLURM_CONF")
        .env("SPO_PIPE_SLURM_POLL", "0.2")
        .env("SPO_PIPE_SLURM_POLL_MAX", "1")
        .output()
        .unwrap()
}

/// A job gone from squeue is looked up with sacct (one query for all such jobs of a cycle):
/// an OUT_OF_MEMORY end is retried with twice the memory, a FAILED one reported with its exit
/// code; the cell that commits is done by its commit.
#[test]
fn a_job_gone_from_squeue_is_judged_by_its_sacct_state() {
    let p = Project::new("");
    let fake = p.path().join("fake-slurm");
    std::fs::create_dir(&fake).unwrap();
    fake_slurm(&fake, true);
    // The first submission (cell r, planned first) is "killed for memory".
    std::fs::write(fake.join("oom.1"), "").unwrap();
    let out = run_faked(&p, &fake, "mem = \"100M\"\nretries = 1");
    let e = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(
        e.contains("↻ retry    r  job 4001 ended OUT_OF_MEMORY (sacct), exit code 0:125; attempt 2 of 2 is job ")
            && e.contains(" (mem 200M, time default)"),
        "{e}"
    );
    let args = std::fs::read_to_string(fake.join("sbatch.args")).unwrap();
    let retried = args
        .lines()
        .find(|l| l.contains("--mem=200M"))
        .unwrap_or_else(|| panic!("no retry with twice the memory in:\n{args}"));
    assert!(retried.contains("--comment=r "), "{retried}");
    assert!(e.contains("✓ done     r  job "), "{e}");
    // f fails in both attempts (its retry is not scaled: FAILED is not for want of memory);
    // the job's exit code is spo-pipe's (1: a cell failed), its log's tail the command's.
    assert!(
        e.contains("↻ retry    f  job ")
            && e.contains(" ended FAILED (sacct), exit code 1:0; attempt 2 of 2 is job 400"),
        "{e}"
    );
    let f_retry = e.lines().find(|l| l.starts_with("↻ retry    f  ")).unwrap();
    assert!(!f_retry.contains("(mem"), "{f_retry}");
    assert!(
        e.contains("ended FAILED (sacct), exit code 1:0 without committing")
            && e.contains("failing"),
        "{e}"
    );
    assert!(
        e.contains("2 cells: 1 ran as Slurm jobs, 0 cached, 1 failed"),
        "{e}"
    );
    assert!(e.contains(" sacct queries)"), "{e}");
    assert!(!e.contains("accounting"), "{e}");
    // Every query named its jobs, in one call.
    let calls = std::fs::read_to_string(fake.join("sacct.calls")).unwrap();
    assert!(
        calls
            .lines()
            .all(|l| l.starts_with("-n -P -X -o JobID,State,ExitCode -j 40")),
        "{calls}"
    );
    assert_eq!(p.committed().len(), 1);
}

/// Where accounting storage is disabled, sacct is asked once, the run says so once and judges
/// jobs gone from squeue by the store's completion record alone, as before.
#[test]
fn without_accounting_the_store_alone_judges_and_the_run_says_so_once() {
    let p = Project::new("");
    let fake = p.path().join("fake-slurm");
    std::fs::create_dir(&fake).unwrap();
    fake_slurm(&fake, false);
    let out = run_faked(&p, &fake, "retries = 1");
    let e = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert_eq!(
        e.matches("note: sacct: Slurm accounting storage is disabled on this cluster; a job gone from squeue is judged by its cell's completion record in the store alone").count(),
        1,
        "{e}"
    );
    assert!(e.contains("✓ done     r  job "), "{e}");
    assert!(e.contains("vanished from squeue without committing"), "{e}");
    assert!(e.contains(", 1 sacct queries)"), "{e}");
    let calls = std::fs::read_to_string(fake.join("sacct.calls")).unwrap();
    assert_eq!(calls.lines().count(), 1, "{calls}");
    assert_eq!(p.committed().len(), 1);
}
