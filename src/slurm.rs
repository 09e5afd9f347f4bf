//! `run --executor slurm`: each ready cell is one Slurm job running this binary on the cell's key
//! against the shared store (docs/slurm.md).
//!
//! The driver keys cells as their inputs commit, submits a missing one with `sbatch` (every job
//! of a run carries the run's id as its name), and asks `squeue` once per cycle, with back-off,
//! about all of them; jobs that have left `squeue` without their commit are looked up with one
//! `sacct` in that cycle, for their final state (where accounting is disabled, said once, the
//! store alone judges them). A cell is done when its key is committed in the store, which the
//! job does itself (`run --only-key KEY`) under the key's lock and lease; a job that ends,
//! vanishes or stays UNKNOWN without that commit is a failure, never a success. Ctrl-C (SIGINT), SIGTERM or
//! SIGHUP cancels the run's jobs with one `scancel --name`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use spo_core::executor::Resources;
use spo_core::record::Recorder;
use spo_core::run::key_parts;
use spo_core::{Committed, Plan};

use crate::UsageError;
use crate::commands::short;
use crate::pipeline::Loaded;
use crate::relaunch::Relaunch;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Tasks per job array (Slurm's default MaxArraySize is 1001: indices 0..=1000).
const ARRAY_MAX: usize = 1000;

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// What the driver needs beyond the loaded pipeline: how to start the same pipeline in a job.
pub struct SlurmArgs<'a> {
    pub pipeline: Option<&'a Path>,
    pub sets: &'a [String],
    pub targets: &'a [String],
    pub quiet: bool,
    /// `--device` and `--device-memory`, passed on to every job.
    pub device: Option<&'a str>,
    pub device_memory: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq)]
enum St {
    Pending,
    Submitted {
        job: String,
        log: PathBuf,
        key: String,
        missing: u32,
        unknown: u32,
        /// 1 for the first job of the cell.
        attempt: u64,
        /// What this attempt asked for.
        res: Resources,
    },
    Done(Committed),
    Failed,
}

/// Runs `args.targets` as Slurm jobs.
pub fn run(l: &Loaded, plan: &Plan, args: &SlurmArgs<'_>) -> anyhow::Result<ExitCode> {
    let say = |line: String| {
        if !args.quiet {
            eprintln!("{line}");
        }
    };
    require("sbatch")?;
    require("squeue")?;
    require("scancel")?;
    let store = l.store()?;
    let store_dir = std::fs::canonicalize(&l.store_dir)
        .with_context(|| format!("the store {}", l.store_dir.display()))?;
    let relaunch = Relaunch::new(
        store_dir.clone(),
        args.pipeline,
        args.sets,
        args.targets,
        args.device_memory,
    )?;
    // Every job's resources (cell > stage > kind > defaults), checked against the cluster
    // before anything is submitted.
    let resources: Vec<Resources> = (0..plan.nodes.len())
        .map(|i| l.pipe.executor.resources_for_cell(plan, i))
        .collect::<Result<_, _>>()
        .map_err(|e| UsageError(format!("{}: {e}", l.pipe.file)))?;
    check_partitions(plan, &resources, &l.pipe.file)?;

    let logs = store_dir.join("logs/slurm");
    std::fs::create_dir_all(&logs).with_context(|| logs.display().to_string())?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let run_id = format!("spo-{}-{:x}", std::process::id(), nanos & 0xffff_ffff);
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGHUP, on_signal as *const () as libc::sighandler_t);
    }
    let live = spo_core::live::LiveRun::start(&store)?;
    let recorder = Recorder::new(&store, plan);
    let n = plan.nodes.len();
    let mut st = vec![St::Pending; n];
    let (mut cached, mut ran, mut failed, mut skipped, mut queries) = (0, 0, Vec::new(), 0, 0u64);
    let t0 = Instant::now();
    let initial = poll_interval();
    let retries = l.pipe.executor.retries.unwrap_or(0);
    let arrays = l.pipe.executor.arrays.unwrap_or(true);
    let mut interval = initial;
    let mut query_every = initial;
    let mut next_query = Instant::now() + initial;
    let mut sacct = Sacct::default();
    say(format!(
        "Slurm run {run_id}: {n} cells; job logs in {}",
        logs.display()
    ));
    // What every submission, first or retried, shares.
    let submitter = Job {
        relaunch: &relaunch,
        device: args.device,
        run_id: &run_id,
        logs: &logs,
    };
    loop {
        if INTERRUPTED.load(Ordering::SeqCst) {
            let jobs = st
                .iter()
                .filter(|s| matches!(s, St::Submitted { .. }))
                .count();
            let out = Command::new("scancel").args(["--name", &run_id]).output();
            match out {
                Ok(o) if o.status.success() => say(format!(
                    "interrupted: cancelled the run's {jobs} unfinished jobs (scancel --name {run_id}) after {queries} squeue queries in {:.1}s",
                    t0.elapsed().as_secs_f64()
                )),
                Ok(o) => eprintln!(
                    "error: scancel --name {run_id} failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
                Err(e) => eprintln!("error: scancel: {e}"),
            }
            return Ok(ExitCode::from(130));
        }
        let mut changed = false;
        let mut submitted = false;
        let mut ready: Vec<(usize, String)> = Vec::new();
        // Key and submit every pending cell whose inputs are all done; skip those with a failed one.
        for i in 0..n {
            if st[i] != St::Pending {
                continue;
            }
            let node = &plan.nodes[i];
            if node.inputs.iter().any(|&j| st[j] == St::Failed) {
                st[i] = St::Failed;
                skipped += 1;
                say(format!("- skipped  {}  (an input failed)", node.display()));
                changed = true;
                continue;
            }
            let inputs: Option<Vec<&Committed>> = node
                .inputs
                .iter()
                .map(|&j| match &st[j] {
                    St::Done(c) => Some(c),
                    _ => None,
                })
                .collect();
            let Some(inputs) = inputs else { continue };
            let parts = key_parts(
                &l.registry,
                node,
                inputs.iter().map(|c| (c.stage.as_str(), c.digest.as_str())),
            )?;
            let key = parts.key();
            changed = true;
            // Protected from `gc` until this run ends, like a local run's keys.
            let found = store
                .lookup(&live, &[key.as_str()])?
                .pop()
                .transpose()?
                .flatten();
            if let Some(c) = found {
                // as a local run does: the cell's index row and slot pointer, if missing
                recorder.reused(i, &c, || Ok(parts.clone()))?;
                cached += 1;
                st[i] = St::Done(c);
                continue;
            }
            ready.push((i, key));
        }
        // Cells ready together with the same resources go as one job array (a sweep's cells,
        // typically), in arrays of at most ARRAY_MAX tasks; a lone cell as one job.
        let mut groups: Vec<(Resources, Vec<(usize, String)>)> = Vec::new();
        for (i, key) in ready.drain(..) {
            match groups.iter_mut().find(|(r, _)| *r == resources[i]) {
                Some((_, g)) => g.push((i, key)),
                None => groups.push((resources[i].clone(), vec![(i, key)])),
            }
        }
        for (res, group) in groups {
            for chunk in group.chunks(if arrays { ARRAY_MAX } else { 1 }) {
                let submitted_ids = if let [(i, key)] = chunk {
                    submitter
                        .submit(key, &plan.nodes[*i].label, &res)
                        .map(|(id, log)| vec![(id, log)])
                } else {
                    let keys: Vec<&str> = chunk.iter().map(|(_, k)| k.as_str()).collect();
                    submitter.submit_array(&keys, &res)
                };
                match submitted_ids {
                    Ok(ids) => {
                        submitted = true;
                        if chunk.len() > 1 {
                            say(format!(
                                "⇢ array    {} cells as job array {}",
                                chunk.len(),
                                ids[0].0.split('_').next().unwrap_or_default()
                            ));
                        }
                        for ((i, key), (id, log)) in chunk.iter().zip(ids) {
                            record_job(&logs, key, &id);
                            say(format!(
                                "⇢ queued   {}  job {id}  {}",
                                plan.nodes[*i].display(),
                                short(key)
                            ));
                            st[*i] = St::Submitted {
                                job: id,
                                log,
                                key: key.clone(),
                                missing: 0,
                                unknown: 0,
                                attempt: 1,
                                res: res.clone(),
                            };
                        }
                    }
                    Err(e) => {
                        for (i, _) in chunk {
                            eprintln!("error: {}: {e}", plan.nodes[*i].display());
                            failed.push(plan.nodes[*i].display());
                            st[*i] = St::Failed;
                        }
                    }
                }
            }
        }
        let waiting = st.iter().any(|s| matches!(s, St::Submitted { .. }));
        if !waiting && !st.contains(&St::Pending) {
            break;
        }
        if waiting {
            // The store is read every cycle (a stat per waiting cell); squeue, one query for
            // every job of the run, only on its own slower schedule.
            let states = if Instant::now() >= next_query {
                queries += 1;
                next_query = Instant::now() + query_every;
                query_every = (query_every * 2).min(max_interval());
                squeue(&run_id)
            } else {
                None
            };
            // Jobs squeue no longer lists whose cells are not committed: their final states
            // from one sacct query for all of them, where accounting answers (only in a cycle
            // that asked squeue, so on its back-off).
            let finals = match &states {
                Some(states) => {
                    let mut gone = Vec::new();
                    for s in &st {
                        if let St::Submitted { job, key, .. } = s
                            && !states.contains_key(job)
                            && store.committed_cell(key)?.is_none()
                        {
                            gone.push(job.as_str());
                        }
                    }
                    sacct.query(&gone, &say)
                }
                None => HashMap::new(),
            };
            for (i, slot) in st.iter_mut().enumerate() {
                let St::Submitted {
                    job,
                    log,
                    key,
                    missing,
                    unknown,
                    attempt,
                    res,
                } = slot
                else {
                    continue;
                };
                let node = &plan.nodes[i];
                if let Some(c) = store.committed_cell(key)? {
                    say(format!(
                        "✓ done     {}  job {job}  {}",
                        node.display(),
                        short(key)
                    ));
                    *slot = St::Done(c);
                    ran += 1;
                    changed = true;
                    continue;
                }
                let Some(states) = &states else {
                    continue; // squeue did not answer: only the store was read this cycle
                };
                // squeue's state, else (gone from squeue) sacct's, if it knows the job.
                let fin = finals.get(job.as_str());
                let (state, via) = match states.get(job.as_str()) {
                    Some(s) => (Some(s.as_str()), ""),
                    None => (fin.map(|f| f.state.as_str()), " (sacct)"),
                };
                let why = match state {
                    Some(
                        s @ ("PENDING" | "CONFIGURING" | "RUNNING" | "COMPLETING" | "SUSPENDED"
                        | "REQUEUED" | "RESIZING" | "SIGNALING" | "STAGE_OUT"),
                    ) => {
                        if via.is_empty() {
                            None
                        } else {
                            // Gone from squeue, but accounting has not heard it end (slurmdbd
                            // lags, or kept a stale record): as long as an UNKNOWN one.
                            *unknown += 1;
                            (*unknown > 20).then(|| {
                                format!("was gone from squeue while sacct said {s} for 20 queries")
                            })
                        }
                    }
                    Some("UNKNOWN") => {
                        *unknown += 1;
                        (*unknown > 20).then(|| "stayed UNKNOWN for 20 queries".to_owned())
                    }
                    // Gone from squeue: it may have just ended and its commit not be visible
                    // yet (a slow shared file system); three queries in a row, then a failure.
                    None => {
                        *missing += 1;
                        (*missing >= 3).then(|| "vanished from squeue".to_owned())
                    }
                    // Ended without a visible commit, by sacct's word: as for a vanished job,
                    // the commit may not be visible here yet; three queries' grace.
                    Some("COMPLETED") if !via.is_empty() && *missing < 2 => {
                        *missing += 1;
                        None
                    }
                    Some(s) => {
                        // Ended (COMPLETED included): the store is the judge; read it once more.
                        if let Some(c) = store.committed_cell(key)? {
                            say(format!(
                                "✓ done     {}  job {job}  {}",
                                node.display(),
                                short(key)
                            ));
                            *slot = St::Done(c);
                            ran += 1;
                            changed = true;
                            continue;
                        }
                        let exit = fin
                            .filter(|_| !via.is_empty() && s != "COMPLETED")
                            .map_or(String::new(), |f| format!(", exit code {}", f.exit));
                        Some(format!("ended {s}{via}{exit}"))
                    }
                };
                if let Some(why) = why {
                    if *attempt <= retries {
                        let res2 = scaled(res, state);
                        match submitter.submit(key, &node.label, &res2) {
                            Ok((id, new_log)) => {
                                record_job(&logs, key, &id);
                                say(format!(
                                    "↻ retry    {}  job {job} {why}; attempt {} of {} is job {id}{}",
                                    node.display(),
                                    *attempt + 1,
                                    retries + 1,
                                    if res2 == *res {
                                        String::new()
                                    } else {
                                        format!(
                                            " (mem {}, time {})",
                                            res2.mem.as_deref().unwrap_or("default"),
                                            res2.time.as_deref().unwrap_or("default")
                                        )
                                    }
                                ));
                                *job = id;
                                *log = new_log;
                                *missing = 0;
                                *unknown = 0;
                                *attempt += 1;
                                submitted = true;
                                *res = res2;
                                changed = true;
                                continue;
                            }
                            Err(e) => eprintln!("error: {}: retry: {e}", node.display()),
                        }
                    }
                    let tail = std::fs::read_to_string(&*log)
                        .map(|t| {
                            t.lines()
                                .rev()
                                .take(10)
                                .collect::<Vec<_>>()
                                .into_iter()
                                .rev()
                                .collect::<Vec<_>>()
                                .join("\n")
                        })
                        .unwrap_or_else(|e| format!("(no log: {e})"));
                    eprintln!(
                        "✗ failed   {}: job {job} {why} without committing {}; log {}:\n{tail}",
                        node.display(),
                        short(key),
                        log.display()
                    );
                    failed.push(node.display());
                    *slot = St::Failed;
                    changed = true;
                }
            }
        }
        if submitted {
            // New jobs: ask squeue soon, to catch a job that fails at once.
            query_every = initial;
            next_query = next_query.min(Instant::now() + initial);
        }
        if changed {
            interval = initial;
        } else {
            interval = (interval * 3 / 2).min(max_interval().min(Duration::from_secs(5)));
            sleep_unless_interrupted(interval);
        }
    }
    say(format!(
        "{n} cells: {ran} ran as Slurm jobs, {cached} cached, {} failed, {skipped} skipped ({:.2}s, {queries} squeue queries{})",
        failed.len(),
        t0.elapsed().as_secs_f64(),
        if sacct.queries > 0 {
            format!(", {} sacct queries", sacct.queries)
        } else {
            String::new()
        }
    ));
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// How a job runs this pipeline on one key.
struct Job<'a> {
    relaunch: &'a Relaunch,
    /// The run's `--device`, for jobs whose cell names none.
    device: Option<&'a str>,
    run_id: &'a str,
    logs: &'a Path,
}

impl Job<'_> {
    /// Submits the job computing `key` (`sbatch --parsable`): its id and its log's path, or
    /// sbatch's own refusal.
    fn submit(&self, key: &str, label: &str, r: &Resources) -> anyhow::Result<(String, PathBuf)> {
        let cmd = self.command(key, r);
        let mut sb = self.sbatch(r);
        sb.arg(format!(
            "--output={}",
            self.logs.join(format!("{key}.%j.log")).display()
        ))
        .arg(format!("--comment={label}"))
        .arg(format!("--wrap={cmd}"));
        let id = run_sbatch(sb)?;
        let log = self.logs.join(format!("{key}.{id}.log"));
        Ok((id, log))
    }

    /// Submits one job array computing `keys` (task `n` computes `keys[n]`, read from a file
    /// in the logs directory): each task's id (`<array>_<n>`) and its log's path.
    fn submit_array(&self, keys: &[&str], r: &Resources) -> anyhow::Result<Vec<(String, PathBuf)>> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let list = self.logs.join(format!("{}.{nanos}.keys", self.run_id));
        std::fs::write(&list, keys.join("\n") + "\n")
            .with_context(|| list.display().to_string())?;
        let cmd = self.command("\"$key\"", r);
        let logs = shell_quote(&self.logs.display().to_string());
        let wrap = format!(
            "key=$(sed -n \"$((SLURM_ARRAY_TASK_ID + 1))p\" {}); exec > {logs}/\"$key.${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}.log\" 2>&1; exec {cmd}",
            shell_quote(&list.display().to_string())
        );
        let mut sb = self.sbatch(r);
        sb.arg(format!("--array=0-{}", keys.len() - 1))
            // Only the wrapper's own failures land here; each task writes its cell's log.
            .arg(format!(
                "--output={}",
                self.logs
                    .join(format!("{}.%A_%a.wrapper.log", self.run_id))
                    .display()
            ))
            .arg(format!("--comment={} cells", keys.len()))
            .arg(format!("--wrap={wrap}"));
        let id = run_sbatch(sb)?;
        Ok(keys
            .iter()
            .enumerate()
            .map(|(n, k)| {
                (
                    format!("{id}_{n}"),
                    self.logs.join(format!("{k}.{id}_{n}.log")),
                )
            })
            .collect())
    }

    /// The shell command a job with resources `r` runs for `key` (a literal key, or a quoted
    /// shell expression, left unquoted): on the cell's device if it names one.
    fn command(&self, key: &str, r: &Resources) -> String {
        let device = r.device.as_deref().or(self.device);
        let args = self.relaunch.args(key, r.cpus.unwrap_or(1), device);
        std::iter::once(shell_quote(&self.relaunch.exe.display().to_string()))
            .chain(
                args.iter()
                    .map(|a| if a == key { a.clone() } else { shell_quote(a) }),
            )
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// `sbatch` with the run's name and the resources `r`.
    fn sbatch(&self, r: &Resources) -> Command {
        let mut sb = Command::new("sbatch");
        sb.args(["--parsable", "--job-name", self.run_id, "--export=ALL"])
            .arg(format!("--cpus-per-task={}", r.cpus.unwrap_or(1)));
        if let Some(m) = &r.mem {
            sb.arg(format!("--mem={m}"));
        }
        if let Some(t) = &r.time {
            sb.arg(format!("--time={t}"));
        }
        if let Some(p) = &r.partition {
            sb.arg(format!("--partition={p}"));
        }
        if let Some(a) = &r.account {
            sb.arg(format!("--account={a}"));
        }
        if let Some(g) = r.gpus.filter(|&g| g > 0) {
            sb.arg(format!("--gpus={g}"));
        }
        sb
    }
}

/// Runs an `sbatch --parsable`: the job id, or sbatch's own refusal.
fn run_sbatch(mut sb: Command) -> anyhow::Result<String> {
    let out = sb.output().context("running sbatch")?;
    if !out.status.success() {
        anyhow::bail!(
            "sbatch refused the job: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let id = String::from_utf8_lossy(&out.stdout)
        .trim()
        .split(';')
        .next()
        .unwrap_or_default()
        .to_owned();
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit() || b == b'_') {
        anyhow::bail!(
            "sbatch answered `{}`, not a job id",
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(id)
}

/// Notes that `key`'s cell is job `id` (`runs/logs/slurm/<key>.job`), for `status`. A hint:
/// losing it only hides the job id from `status`.
fn record_job(logs: &Path, key: &str, id: &str) {
    let path = logs.join(format!("{key}.job"));
    if let Err(e) = std::fs::write(&path, format!("{id}\n")) {
        tracing::warn!("{}: {e}", path.display());
    }
}

/// For `status`: the Slurm job last submitted for each of `keys` that has one, with its state
/// now (`squeue -r`, one call; `None` where squeue no longer lists it or cannot be asked).
pub fn job_states(store_dir: &Path, keys: &[&str]) -> HashMap<String, (String, Option<String>)> {
    let logs = store_dir.join("logs/slurm");
    let jobs: HashMap<String, String> = keys
        .iter()
        .filter_map(|k| {
            let id = std::fs::read_to_string(logs.join(format!("{k}.job"))).ok()?;
            let id = id.trim().to_owned();
            (!id.is_empty() && id.bytes().all(|b| b.is_ascii_digit() || b == b'_'))
                .then(|| ((*k).to_owned(), id))
        })
        .collect();
    if jobs.is_empty() {
        return HashMap::new();
    }
    let ids: Vec<&str> = jobs.values().map(String::as_str).collect();
    let states: HashMap<String, String> = Command::new("squeue")
        .args([
            "-h",
            "-r",
            "--states=all",
            "-o",
            "%i|%T",
            "-j",
            &ids.join(","),
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split_once('|'))
                .map(|(i, s)| (i.trim().to_owned(), s.trim().to_owned()))
                .collect()
        })
        .unwrap_or_default();
    jobs.into_iter()
        .map(|(k, id)| {
            let state = states.get(&id).cloned();
            (k, (id, state))
        })
        .collect()
}

/// The resources of a retry after a job ended `state`: twice the memory after OUT_OF_MEMORY,
/// twice the time after TIMEOUT (where the first attempt set them), else the same.
fn scaled(r: &Resources, state: Option<&str>) -> Resources {
    let mut r = r.clone();
    match state {
        Some("OUT_OF_MEMORY") => {
            r.mem = r.mem.as_deref().and_then(|m| {
                let digits = m.trim_end_matches(|c: char| c.is_ascii_alphabetic());
                let unit = &m[digits.len()..];
                digits
                    .parse::<u64>()
                    .ok()
                    .map(|n| format!("{}{unit}", n * 2))
            });
        }
        Some("TIMEOUT") => {
            r.time = r
                .time
                .as_deref()
                .and_then(time_minutes)
                .map(|m| (m * 2).to_string());
        }
        _ => {}
    }
    r
}

/// A Slurm time limit in minutes (rounded up), from any of its forms.
fn time_minutes(t: &str) -> Option<u64> {
    let (days, rest) = match t.split_once('-') {
        Some((d, r)) => (d.parse::<u64>().ok()?, r),
        None => (0, t),
    };
    let p: Vec<u64> = rest
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let secs = match (t.contains('-'), p.as_slice()) {
        (false, [m]) => m * 60,
        (false, [m, s]) => m * 60 + s,
        (false, [h, m, s]) => h * 3600 + m * 60 + s,
        (true, [h]) => h * 3600,
        (true, [h, m]) => h * 3600 + m * 60,
        (true, [h, m, s]) => h * 3600 + m * 60 + s,
        _ => return None,
    };
    Some((days * 86400 + secs).div_ceil(60))
}

/// First poll interval (`SPO_PIPE_SLURM_POLL`, seconds; default 1).
fn poll_interval() -> Duration {
    env_secs("SPO_PIPE_SLURM_POLL").unwrap_or(Duration::from_secs(1))
}

/// Longest poll interval (`SPO_PIPE_SLURM_POLL_MAX`, seconds; default 30).
fn max_interval() -> Duration {
    env_secs("SPO_PIPE_SLURM_POLL_MAX").unwrap_or(Duration::from_secs(30))
}

fn env_secs(name: &str) -> Option<Duration> {
    std::env::var(name)
        .ok()?
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(Duration::from_secs_f64)
}

fn sleep_unless_interrupted(d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until && !INTERRUPTED.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50).min(d));
    }
}

/// `tool` can be started, or a clear error.
fn require(tool: &str) -> anyhow::Result<()> {
    match Command::new(tool).arg("--version").output() {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(UsageError(format!(
            "the Slurm executor needs `{tool}` on PATH, and it is not there; install Slurm's client tools, or run without --executor slurm"
        ))
        .into()),
        Err(e) => Err(anyhow::anyhow!("cannot run `{tool}`: {e}")),
    }
}

/// Every partition the jobs name exists (`sinfo`), or a clear error naming it and a cell that
/// asks for it.
fn check_partitions(plan: &Plan, resources: &[Resources], file: &str) -> anyhow::Result<()> {
    let mut wanted: std::collections::BTreeMap<&str, String> = Default::default();
    for (i, r) in resources.iter().enumerate() {
        if let Some(p) = r.partition.as_deref() {
            wanted.entry(p).or_insert_with(|| plan.nodes[i].display());
        }
    }
    if wanted.is_empty() {
        return Ok(());
    }
    require("sinfo")?;
    let out = Command::new("sinfo")
        .args(["-h", "-o", "%P"])
        .output()
        .context("running sinfo")?;
    if !out.status.success() {
        anyhow::bail!(
            "sinfo failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let have: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().trim_end_matches('*').to_owned())
        .collect();
    for (p, cell) in wanted {
        if !have.iter().any(|h| h == p) {
            return Err(UsageError(format!(
                "{file}: [executor] partition `{p}` (asked for by cell {cell}) does not exist on this cluster (sinfo lists: {})",
                have.join(", ")
            ))
            .into());
        }
    }
    Ok(())
}

/// The state of each job named `run_id` (`squeue --states=all`, one call); `None` if squeue did
/// not answer (a controller timeout: asked again next cycle, and no job is judged by it).
fn squeue(run_id: &str) -> Option<HashMap<String, String>> {
    let out = match Command::new("squeue")
        // -r: one line per array task (`<array>_<n>`), pending ones included.
        .args(["-h", "-r", "--states=all", "-o", "%i|%T", "--name", run_id])
        .output()
    {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            tracing::warn!(
                "squeue failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return None;
        }
        Err(e) => {
            tracing::warn!("squeue: {e}");
            return None;
        }
    };
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('|'))
            .map(|(id, s)| (id.trim().to_owned(), s.trim().to_owned()))
            .collect(),
    )
}

/// A job's end as accounting records it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Final {
    /// `COMPLETED`, `FAILED`, `OUT_OF_MEMORY`, `TIMEOUT`, `CANCELLED` (sacct's `CANCELLED by
    /// UID` without the uid), `NODE_FAIL`, …, or a state it is still in (`RUNNING`).
    state: String,
    /// `exit:signal`, e.g. `1:0`.
    exit: String,
}

/// `sacct`, asked about jobs that left `squeue`; off for the rest of the run (said once) where
/// there is none or accounting is disabled, leaving the store's completion record the only
/// witness.
#[derive(Default)]
struct Sacct {
    off: bool,
    queries: u64,
}

impl Sacct {
    /// The final states of `jobs` (one `sacct -n -P -X -j …` for all of them); empty for none,
    /// and where sacct is off or does not answer (then the jobs are judged as before: the
    /// store, and three queries' grace for a vanished one).
    fn query(&mut self, jobs: &[&str], say: &dyn Fn(String)) -> HashMap<String, Final> {
        if jobs.is_empty() || self.off {
            return HashMap::new();
        }
        self.queries += 1;
        let out = Command::new("sacct")
            .args(["-n", "-P", "-X", "-o", "JobID,State,ExitCode", "-j"])
            .arg(jobs.join(","))
            .output();
        let off = |why: &str| {
            say(format!(
                "note: {why}; a job gone from squeue is judged by its cell's completion record in the store alone"
            ))
        };
        match out {
            Ok(o) if o.status.success() => parse_sacct(&String::from_utf8_lossy(&o.stdout)),
            Ok(o) => {
                let err = String::from_utf8_lossy(&o.stderr);
                if err.contains("accounting storage is disabled") {
                    self.off = true;
                    off("sacct: Slurm accounting storage is disabled on this cluster");
                } else {
                    tracing::warn!("sacct failed: {}", err.trim());
                }
                HashMap::new()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.off = true;
                off("no sacct on PATH");
                HashMap::new()
            }
            Err(e) => {
                tracing::warn!("sacct: {e}");
                HashMap::new()
            }
        }
    }
}

/// The lines of `sacct -n -P -X -o JobID,State,ExitCode` by job id (`123`, an array task
/// `123_4`); a requeued job's last line wins. Pending array ranges (`123_[5-9]`) and lines that
/// are not three fields are left out.
fn parse_sacct(out: &str) -> HashMap<String, Final> {
    out.lines()
        .filter_map(|l| {
            let mut f = l.trim().split('|');
            let (id, state, exit) = (f.next()?.trim(), f.next()?.trim(), f.next()?.trim());
            if id.is_empty() || id.contains('[') || f.next().is_some() {
                return None;
            }
            // `CANCELLED by 0`; a `+` where a narrow column cut the state.
            let state = state
                .split_whitespace()
                .next()?
                .trim_end_matches('+')
                .to_owned();
            Some((
                id.to_owned(),
                Final {
                    state,
                    exit: exit.to_owned(),
                },
            ))
        })
        .collect()
}

/// `s` quoted for `sh`.
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-=@:,+".contains(&b))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_limits_in_minutes() {
        assert_eq!(time_minutes("30"), Some(30));
        assert_eq!(time_minutes("30:30"), Some(31));
        assert_eq!(time_minutes("1:00:00"), Some(60));
        assert_eq!(time_minutes("2-00"), Some(2880));
        assert_eq!(time_minutes("1-01:30"), Some(1530));
        assert_eq!(time_minutes("0-00:00:59"), Some(1));
        assert_eq!(time_minutes("x"), None);
    }

    #[test]
    fn a_retry_after_oom_or_timeout_asks_for_twice_as_much() {
        let r = Resources {
            mem: Some("512M".into()),
            time: Some("1:30:00".into()),
            ..Resources::default()
        };
        let oom = scaled(&r, Some("OUT_OF_MEMORY"));
        assert_eq!(
            (oom.mem.as_deref(), oom.time.as_deref()),
            (Some("1024M"), Some("1:30:00"))
        );
        let late = scaled(&r, Some("TIMEOUT"));
        assert_eq!(
            (late.mem.as_deref(), late.time.as_deref()),
            (Some("512M"), Some("180"))
        );
        assert_eq!(scaled(&r, Some("FAILED")), r);
        let unset = scaled(&Resources::default(), Some("OUT_OF_MEMORY"));
        assert_eq!(unset.mem, None);
    }

    #[test]
    fn sacct_lines_by_job_id() {
        // As `sacct -n -P -X -j … -o JobID,State,ExitCode` prints them (Slurm 22.05 and 23.11).
        let out = "\
4242|COMPLETED|0:0
4243|FAILED|3:0
4244|OUT_OF_MEMORY|0:125
4245|TIMEOUT|0:0
4246|CANCELLED by 0|0:15
4247_0|NODE_FAIL|0:0
4247_1|CANCELLED by 1000|0:0
4247_[2-9]|PENDING|0:0
4248|RUNNING|0:0
4249|REQUEUED|0:0
4249|COMPLETED|0:0
4250|CANCELLED+|0:0

garbage
";
        let got = parse_sacct(out);
        let f = |id: &str| {
            got.get(id)
                .map(|f| (f.state.as_str(), f.exit.as_str()))
                .unwrap_or_else(|| panic!("{id} not in {got:?}"))
        };
        assert_eq!(f("4242"), ("COMPLETED", "0:0"));
        assert_eq!(f("4243"), ("FAILED", "3:0"));
        assert_eq!(f("4244"), ("OUT_OF_MEMORY", "0:125"));
        assert_eq!(f("4245"), ("TIMEOUT", "0:0"));
        assert_eq!(f("4246"), ("CANCELLED", "0:15"));
        assert_eq!(f("4247_0"), ("NODE_FAIL", "0:0"));
        assert_eq!(f("4247_1"), ("CANCELLED", "0:0"));
        assert_eq!(f("4248"), ("RUNNING", "0:0"));
        assert_eq!(f("4249"), ("COMPLETED", "0:0"), "the last line wins");
        assert_eq!(f("4250"), ("CANCELLED", "0:0"));
        assert_eq!(got.len(), 10, "{got:?}");
        assert!(parse_sacct("").is_empty());
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("/a/b-c.toml"), "/a/b-c.toml");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote(""), "''");
    }
}
