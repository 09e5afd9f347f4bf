//! One function per verb.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use indicatif::{MultiProgress, ProgressDrawTarget};
use spo_core::explain::{self, State};
use spo_core::run::{self, RunOptions};
use spo_core::verify::Place;
use spo_core::{Event, Manifest, Plan, dag, diff, gc, index, tables};

use crate::UsageError;
use crate::cli::{Cli, Command, DagFormat, ExecutorKind, TableFormat};
use crate::pipeline::{Loaded, load};

/// Runs the verb in `cli`.
pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let pipe_file = cli.pipeline.as_deref();
    let store = cli.store.as_deref();
    let set = cli.set.as_slice();
    // an empty value (an exported but empty SPO_PIPE_DEVICE…) means unset, as for RUST_LOG
    let (device, device_memory) = (
        cli.device.as_deref().filter(|d| !d.is_empty()),
        cli.device_memory.as_deref().filter(|m| !m.is_empty()),
    );
    if let Some(d) = device {
        let choice = d
            .parse::<spo_stages::device::DeviceChoice>()
            .map_err(|e| UsageError(format!("--device: {e}")))?;
        spo_stages::device::select_device(choice).map_err(|e| UsageError(e.to_string()))?;
    }
    if let Some(m) = device_memory {
        let bytes = spo_stages::device::parse_size(m)
            .map_err(|e| UsageError(format!("--device-memory: {e}")))?;
        spo_stages::device::set_memory_limit(bytes).map_err(|e| UsageError(e.to_string()))?;
    }
    match cli.command {
        Command::Run {
            plan,
            jobs,
            dry_run,
            keep_going,
            no_report,
            remote,
            no_remote,
            executor,
            only_key,
        } => {
            let l = load(pipe_file, store, set)?;
            let slurm = match executor {
                Some(k) => k == ExecutorKind::Slurm,
                None => l.pipe.executor.kind.as_deref() == Some("slurm") && only_key.is_none(),
            };
            if slurm && !dry_run {
                let p = self::plan(&l, &plan.targets)?;
                return crate::slurm::run(
                    &l,
                    &p,
                    &crate::slurm::SlurmArgs {
                        pipeline: pipe_file,
                        sets: set,
                        targets: &plan.targets,
                        quiet: cli.quiet,
                        device,
                        device_memory,
                    },
                );
            }
            let remote = if no_remote {
                None
            } else {
                remote.or_else(|| l.pipe.remote.clone())
            };
            cmd_run(
                &l,
                &plan.targets,
                &RunFlags {
                    jobs: jobs_or_cores(jobs),
                    dry_run,
                    keep_going,
                    report: !no_report,
                    quiet: cli.quiet,
                    verbose: cli.verbose,
                    remote,
                    only_key,
                    relaunch: if l.pipe.executor.names_a_device() && !dry_run {
                        Some(crate::relaunch::Relaunch::new(
                            std::path::absolute(&l.store_dir)
                                .with_context(|| format!("the store {}", l.store_dir.display()))?,
                            pipe_file,
                            set,
                            &plan.targets,
                            device_memory,
                        )?)
                    } else {
                        None
                    },
                },
            )
        }
        Command::Push { plan, all, remote } => crate::remote::cmd_push(
            &load(pipe_file, store, set)?,
            &plan.targets,
            all,
            remote,
            cli.quiet,
        ),
        Command::Pull { plan, remote, jobs } => crate::remote::cmd_pull(
            &load(pipe_file, store, set)?,
            &plan.targets,
            remote,
            jobs_or_cores(jobs),
            cli.quiet,
        ),
        Command::Status { plan, json } => {
            cmd_status(&load(pipe_file, store, set)?, &plan.targets, json)
        }
        Command::Why { cell, seed, json } => {
            cmd_why(&load(pipe_file, store, set)?, &cell, seed, json)
        }
        Command::Dag { format } => {
            let l = load(pipe_file, store, set)?;
            let f = match format {
                DagFormat::Text => dag::DagFormat::Text,
                DagFormat::Dot => dag::DagFormat::Dot,
                DagFormat::Mermaid => dag::DagFormat::Mermaid,
            };
            print!("{}", dag::render(&l.pipe, f));
            Ok(ExitCode::SUCCESS)
        }
        Command::Show {
            what,
            seed,
            head,
            json,
        } => cmd_show(&load(pipe_file, store, set)?, &what, seed, head, json),
        Command::Gc { targets, dry_run } => cmd_gc(&load(pipe_file, store, set)?, targets, dry_run),
        Command::Verify { repair } => cmd_verify(&load(pipe_file, store, set)?, repair),
        Command::Tables { names, format } => {
            cmd_tables(&load(pipe_file, store, set)?, &names, format)
        }
        Command::Diff { a, b, json, html } => {
            cmd_diff(&load(pipe_file, store, set)?, &a, &b, json, html.as_deref())
        }
        Command::Report {
            plan,
            out,
            serve,
            port,
            prompts,
        } => crate::report::cmd_report(
            &load(pipe_file, store, set)?,
            plan.targets,
            out,
            serve.then_some(port),
            usize::try_from(prompts).unwrap_or(usize::MAX),
        ),
        Command::Pin {
            dir,
            repo,
            revision,
            name,
            exclude,
            dataset,
            local,
        } => {
            print!(
                "{}",
                crate::pin::stage_toml(&crate::pin::PinArgs {
                    dir: &dir,
                    repo: &repo,
                    revision: &revision,
                    name: &name,
                    exclude: &exclude,
                    dataset,
                    local,
                })?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Score {
            metric,
            weights,
            images,
            prompts,
            image_column,
            prompt_column,
            out,
            batch,
        } => {
            let args = crate::score::ScoreArgs {
                metric: &metric,
                weights: &weights,
                images: &images,
                prompts: prompts.as_deref(),
                image_column: &image_column,
                prompt_column: &prompt_column,
                out: &out,
                batch: usize::try_from(batch).unwrap_or(usize::MAX),
            };
            let (n, mean) = crate::score::run(&args)?;
            eprintln!(
                "scored {n} images with {metric}: mean {mean:.4}; wrote {}",
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Kinds => {
            let l = load(pipe_file, store, set)?;
            for k in l.registry.iter() {
                println!(
                    "{} (v{}{}): {}",
                    k.name(),
                    k.version(),
                    if k.seeded() { ", seeded" } else { "" },
                    k.summary()
                );
                for p in k.params() {
                    let default = p
                        .default
                        .as_ref()
                        .map_or("required".to_owned(), |d| format!("default {d}"));
                    println!(
                        "    {:<24} {} ({default}){}",
                        p.name,
                        p.ty,
                        if p.doc.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", p.doc)
                        }
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `--jobs`, else this machine's cores.
fn jobs_or_cores(jobs: Option<u64>) -> usize {
    jobs.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        |j| usize::try_from(j).unwrap_or(usize::MAX),
    )
}

pub(crate) fn short(key: &str) -> &str {
    &key[..key.len().min(12)]
}

pub(crate) fn plan(l: &Loaded, targets: &[String]) -> anyhow::Result<Plan> {
    Ok(Plan::build(&l.pipe, &l.registry, targets)?)
}

/// How `run` was asked to run.
struct RunFlags {
    jobs: usize,
    dry_run: bool,
    keep_going: bool,
    /// Print the targets' tables and write the report at the end.
    report: bool,
    quiet: bool,
    verbose: u8,
    /// The remote cache to fetch missing cells from.
    remote: Option<String>,
    /// Compute only this key (a Slurm job).
    only_key: Option<String>,
    /// How to start this run again for one key, where a cell names a device of its own.
    relaunch: Option<crate::relaunch::Relaunch>,
}

fn cmd_run(l: &Loaded, targets: &[String], f: &RunFlags) -> anyhow::Result<ExitCode> {
    let RunFlags {
        jobs,
        dry_run,
        keep_going,
        quiet,
        verbose,
        ..
    } = *f;
    let store = l.store()?;
    let plan = store.warm_while(|| plan(l, targets))?;
    if dry_run {
        let st = explain::status(&l.registry, &store, &plan)?;
        let todo: Vec<_> = st.iter().filter(|s| s.state != State::Cached).collect();
        for s in &todo {
            let why = if s.changes.is_empty() {
                "never run".to_owned()
            } else {
                s.changes
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            println!("would run  {}  ({why})", plan.nodes[s.node].display());
        }
        println!("{} of {} cells would run", todo.len(), st.len());
        return Ok(ExitCode::SUCCESS);
    }
    let draw = if quiet || !std::io::stderr().is_terminal() {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    let multi = MultiProgress::with_draw_target(draw);
    let say = |line: String| {
        if !quiet {
            multi.suspend(|| eprintln!("{line}"));
        }
    };
    let on = |e: Event<'_>| match e {
        Event::Cached(n, k) if verbose > 0 => {
            say(format!("  cached   {}  {}", n.display(), short(k)))
        }
        Event::Cached(..) | Event::WouldRun(_) => {}
        Event::Waiting(n) => say(format!(
            "  waiting  {}  (another spo-pipe process is computing it)",
            n.display()
        )),
        Event::Started(n) => say(format!("▶ running  {}", n.display())),
        Event::Finished(n, k, s) => say(format!(
            "✓ done     {}  {:.1}s  {}",
            n.display(),
            s,
            short(k)
        )),
        Event::Failed(n, m) => say(format!("✗ failed   {}: {m}", n.display())),
        Event::Skipped(n) => say(format!("- skipped  {}  (an input failed)", n.display())),
        Event::Fetched(n, k) => say(format!("⇣ fetched  {}  {}", n.display(), short(k))),
        Event::BadRemote(n, m) => say(format!(
            "! remote   {}: {m}; computing it here",
            n.display()
        )),
        Event::Absent(_) => {}
    };
    let remote = match &f.remote {
        Some(url) => Some(crate::remote::open(url)?),
        None => None,
    };
    let opts = RunOptions {
        jobs,
        dry_run: false,
        keep_going,
        progress: multi.clone(),
        remote: remote.clone().map(|r| r as _),
        fetch_only: false,
        only_key: f.only_key.clone(),
        elsewhere: match &f.relaunch {
            Some(r) => crate::relaunch::elsewhere(
                l,
                &plan,
                r.clone(),
                spo_stages::device::chosen(),
                jobs as u64,
                quiet,
            )?,
            None => None,
        },
    };
    let t0 = std::time::Instant::now();
    let s = run::run(&l.pipe, &l.registry, &store, &plan, &opts, &on)?;
    if !quiet {
        let fetched = if remote.is_some() {
            format!(", {} fetched", s.fetched)
        } else {
            String::new()
        };
        eprintln!(
            "{} cells: {} ran, {} cached{fetched}, {} failed, {} skipped ({:.2}s)",
            plan.nodes.len(),
            s.ran,
            s.cached,
            s.failed.len(),
            s.skipped,
            t0.elapsed().as_secs_f64()
        );
    }
    // SPO_PIPE_REPORT=0 turns the report off for scripts that only want the cells.
    let report = f.report && std::env::var_os("SPO_PIPE_REPORT").is_none_or(|v| v != "0");
    if report && !quiet {
        crate::report::after_run(l, &store, &plan, targets);
    }
    Ok(exit_for(&s.failed))
}

/// A run's exit code: success, or 1 after naming each failed cell (`(label, message)`).
pub fn exit_for(failed: &[(String, String)]) -> ExitCode {
    for (label, msg) in failed {
        eprintln!("error: {label}: {msg}");
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn cmd_status(l: &Loaded, targets: &[String], json: bool) -> anyhow::Result<ExitCode> {
    let store = l.store()?;
    let plan = store.warm_while(|| plan(l, targets))?;
    let st = explain::status(&l.registry, &store, &plan)?;
    // Cells handed to Slurm by `run --executor slurm`: their job and its state now.
    let waiting: Vec<&str> = st
        .iter()
        .filter(|s| matches!(s.state, State::Missing | State::Stale))
        .filter_map(|s| s.key.as_deref())
        .collect();
    let jobs = crate::slurm::job_states(&l.store_dir, &waiting);
    let job_of = |s: &explain::CellStatus| s.key.as_deref().and_then(|k| jobs.get(k));
    if json {
        let mut v = serde_json::to_value(&st)?;
        if let Some(cells) = v.as_array_mut() {
            for (cell, s) in cells.iter_mut().zip(&st) {
                if let (Some((id, state)), Some(obj)) = (job_of(s), cell.as_object_mut()) {
                    obj.insert("slurm_job".into(), id.clone().into());
                    obj.insert("slurm_state".into(), state.clone().into());
                }
            }
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    for s in &st {
        let key = s.key.as_deref().map_or("-", short);
        let mut changes = s
            .changes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        let mut state = s.state.to_string();
        if let Some((id, job_state)) = job_of(s) {
            let shown = match job_state.as_deref() {
                Some("PENDING" | "CONFIGURING" | "REQUEUED") => Some("queued"),
                Some("RUNNING" | "COMPLETING" | "SUSPENDED") => Some("running"),
                _ => None,
            };
            let note = match (shown, job_state) {
                (Some(_), _) => format!("slurm job {id}"),
                (None, Some(js)) => format!("slurm job {id} {js}"),
                (None, None) => format!("slurm job {id} (no longer in squeue)"),
            };
            if let Some(sh) = shown {
                state = sh.to_owned();
            }
            changes = if changes.is_empty() {
                note
            } else {
                format!("{note}; {changes}")
            };
        }
        println!(
            "{state:<8} {:<40} {key:<12} {changes}",
            plan.nodes[s.node].display()
        );
    }
    let count = |st_: State| st.iter().filter(|s| s.state == st_).count();
    println!(
        "{} cached, {} stale, {} missing",
        count(State::Cached),
        count(State::Stale),
        count(State::Missing)
    );
    if !jobs.is_empty() {
        let active = |want: &[&str]| {
            jobs.values()
                .filter(|(_, st)| st.as_deref().is_some_and(|x| want.contains(&x)))
                .count()
        };
        println!(
            "of which {} queued and {} running as Slurm jobs",
            active(&["PENDING", "CONFIGURING", "REQUEUED"]),
            active(&["RUNNING", "COMPLETING", "SUSPENDED"])
        );
    }
    let damaged = count(State::Damaged);
    if damaged > 0 {
        println!("{damaged} damaged: run `spo-pipe verify --repair` to quarantine them");
    }
    Ok(ExitCode::SUCCESS)
}

/// The nodes a selector names (one per seed, or just `seed`).
fn select(l: &Loaded, sel: &str, seed: Option<u64>) -> anyhow::Result<(Plan, Vec<usize>)> {
    let (stage, variant) = spo_core::plan::parse_selector(&l.pipe, &l.registry, sel)?;
    let plan = Plan::build(&l.pipe, &l.registry, &[sel.to_owned()])?;
    let nodes: Vec<usize> = plan
        .find(&l.pipe, &stage, &variant)
        .into_iter()
        .filter(|n| seed.is_none() || n.seed == seed)
        .map(|n| plan.get(&n.cell, n.seed).unwrap_or_default())
        .collect();
    if nodes.is_empty() {
        return Err(UsageError(format!(
            "`{sel}` names no cell{}",
            seed.map_or(String::new(), |s| format!(" with seed {s}"))
        ))
        .into());
    }
    Ok((plan, nodes))
}

fn cmd_why(l: &Loaded, sel: &str, seed: Option<u64>, json: bool) -> anyhow::Result<ExitCode> {
    let store = l.store()?;
    let (plan, nodes) = select(l, sel, seed)?;
    let whys = nodes
        .iter()
        .map(|&n| explain::why(&l.registry, &store, &plan, n))
        .collect::<Result<Vec<_>, _>>()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&whys)?);
        return Ok(ExitCode::SUCCESS);
    }
    for w in whys {
        let name = match w.seed {
            Some(s) => format!("{}#{s}", w.label),
            None => w.label.clone(),
        };
        match (w.state, &w.last_key) {
            (State::Cached, _) => {
                println!("{name}: cached as {}", w.key.as_deref().map_or("?", short))
            }
            (State::Missing, _) => println!("{name}: never run"),
            (State::Damaged, _) => println!(
                "{name}: damaged as {} (run `spo-pipe verify --repair`)",
                w.key.as_deref().map_or("?", short)
            ),
            (State::Stale, last) => {
                println!(
                    "{name}: will rerun (last run {}):",
                    last.as_deref().map_or("?", short)
                );
                for c in &w.changes {
                    println!("  - {c}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_show(
    l: &Loaded,
    what: &str,
    seed: Option<u64>,
    head: Option<usize>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let store = l.store()?;
    let is_hex = what.len() >= 6 && what.chars().all(|c| c.is_ascii_hexdigit());
    let key = if is_hex {
        let keys = store.keys_with_prefix(what)?;
        match keys.as_slice() {
            [k] => k.clone(),
            [] => {
                return Err(UsageError(format!(
                    "no committed cell has a key starting with `{what}`"
                ))
                .into());
            }
            _ => {
                return Err(UsageError(format!(
                    "`{what}` matches {} keys; give more digits",
                    keys.len()
                ))
                .into());
            }
        }
    } else {
        let (plan, nodes) = select(l, what, seed)?;
        let st = explain::status(&l.registry, &store, &plan)?;
        let s = &st[nodes[0]];
        match (s.state, &s.key) {
            (State::Cached, Some(k)) => k.clone(),
            _ => {
                return Err(UsageError(format!(
                    "`{}` is {}; run `spo-pipe run {what}` first",
                    plan.nodes[nodes[0]].display(),
                    s.state
                ))
                .into());
            }
        }
    };
    let dir = store.cell_dir(&key);
    let m = Manifest::read(&dir)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&m)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("key       {}", m.key);
    println!(
        "cell      {}{}  (stage `{}`, kind `{}` v{})",
        m.label,
        m.seed.map_or(String::new(), |s| format!("#{s}")),
        m.stage,
        m.kind,
        m.version
    );
    println!(
        "ran       {:.1}s on {} with spo-pipe {}, started at unix {:.0}",
        m.seconds, m.host, m.tool_version, m.started
    );
    println!("params");
    for (k, v) in &m.params.0 {
        println!("  {k} = {v}");
    }
    if !m.inputs.is_empty() {
        println!("inputs");
        for i in &m.inputs {
            println!(
                "  {:<20} key {}  content {}",
                i.stage,
                short(&i.key),
                short(&i.digest)
            );
        }
    }
    println!("files     (content {})", short(&m.digest));
    for f in &m.files {
        let info = match &f.info {
            Some(spo_core::FileInfo::Parquet { rows, columns }) => {
                format!("  {rows} rows: {}", columns.join(", "))
            }
            Some(spo_core::FileInfo::Safetensors { tensors }) => format!(
                "  {} tensors: {}",
                tensors.len(),
                tensors
                    .iter()
                    .take(8)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Some(spo_core::FileInfo::Png { width, height }) => format!("  {width}x{height} PNG"),
            None => String::new(),
        };
        println!(
            "  {:<32} {:>10} B  {}{info}",
            f.path,
            f.bytes,
            short(&f.sha256)
        );
    }
    if !m.metrics.is_empty() {
        println!("metrics");
        for (k, v) in &m.metrics {
            println!("  {k} = {v}");
        }
    }
    if let Some(n) = head {
        for f in m.files.iter().filter(|f| f.path.ends_with(".parquet")) {
            println!("\n{} (first {n} rows)", f.path);
            print!("{}", crate::parquet_head::head(&dir.join(&f.path), n)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_gc(l: &Loaded, targets: Vec<String>, dry_run: bool) -> anyhow::Result<ExitCode> {
    let store = l.store()?;
    let targets = if targets.is_empty() {
        l.pipe
            .target_names()
            .into_iter()
            .map(String::from)
            .collect()
    } else {
        targets
    };
    let plan = store.warm_while(|| plan(l, &targets))?;
    let r = gc::gc(&l.registry, &store, &plan, dry_run)?;
    let verb = if dry_run { "would remove" } else { "removed" };
    for (k, label, bytes) in &r.cells {
        println!("{verb} {}  {label}  {bytes} B", short(k));
    }
    for k in &r.scratch {
        println!("{verb} checkpoints of {}", short(k));
    }
    for k in &r.busy {
        println!(
            "kept {} (in use by a live run or another process)",
            short(k)
        );
    }
    if r.index_files_merged > 0 {
        println!("merged {} run-index files into one", r.index_files_merged);
    }
    println!(
        "{verb} {} cells ({} B) and {} checkpoint dirs",
        r.cells.len(),
        r.cells.iter().map(|c| c.2).sum::<u64>(),
        r.scratch.len()
    );
    Ok(ExitCode::SUCCESS)
}

fn cmd_verify(l: &Loaded, repair: bool) -> anyhow::Result<ExitCode> {
    let store = l.store()?;
    let mut n = 0;
    let damage = store.verify(|_| n += 1)?;
    for d in &damage {
        let place = match &d.place {
            Place::Cell { key } => format!("cell {key}"),
            Place::Index => "run index".into(),
            Place::Pointer => "slot pointer".into(),
        };
        println!("DAMAGED {place}  {}: {}", d.path, d.problem);
    }
    println!("verified {n} cells: {} damaged files", damage.len());
    if damage.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    if !repair {
        println!("run `spo-pipe verify --repair` to quarantine them; the next run recomputes them");
        return Ok(ExitCode::from(1));
    }
    let r = store.repair(&damage)?;
    for (what, to) in &r.quarantined {
        println!("quarantined {what} -> {}", to.display());
    }
    for key in &r.busy {
        println!(
            "kept {} (in use by another process; repair again when it ends)",
            short(key)
        );
    }
    Ok(if r.busy.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn cmd_tables(l: &Loaded, names: &[String], format: TableFormat) -> anyhow::Result<ExitCode> {
    let store = l.store()?;
    let rows = index::read_metrics(&store.index_dir())?;
    let fmt = match format {
        TableFormat::Md => tables::Format::Md,
        TableFormat::Latex => tables::Format::Latex,
        TableFormat::Csv => tables::Format::Csv,
    };
    let chosen: Vec<_> = if names.is_empty() {
        l.pipe.tables.iter().collect()
    } else {
        names
            .iter()
            .map(|n| {
                l.pipe.table(n).ok_or_else(|| {
                    UsageError(format!(
                        "no table named `{n}` (tables: {})",
                        l.pipe
                            .tables
                            .iter()
                            .map(|t| t.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })
            })
            .collect::<Result<_, _>>()?
    };
    let mut missing = 0;
    for t in chosen {
        let r = tables::render(&l.pipe, &l.registry, t, &rows, fmt)?;
        println!("{}", r.text);
        if !r.missing.is_empty() {
            missing += r.missing.len();
            eprintln!(
                "table `{}`: {} cells have no run yet: {}\n  compute them with: {}",
                t.name,
                r.missing.len(),
                r.missing.join(", "),
                r.command
            );
        }
    }
    Ok(if missing == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// One line per differing `stage.param`; a stage upstream of only one side is one line.
fn print_param_diff(
    params: &std::collections::BTreeMap<
        String,
        (Option<serde_json::Value>, Option<serde_json::Value>),
    >,
) {
    let stage_of = |k: &str| k.split_once('.').map_or(k, |(s, _)| s).to_owned();
    let rows: Vec<_> = params.iter().collect();
    // Keys are sorted, so each stage's params are adjacent.
    for group in rows.chunk_by(|a, b| stage_of(a.0) == stage_of(b.0)) {
        let stage = stage_of(group[0].0);
        let several = group.len() > 1;
        if several && group.iter().all(|(_, (a, _))| a.is_none()) {
            println!("  stage `{stage}`: only in B ({} params)", group.len());
        } else if several && group.iter().all(|(_, (_, b))| b.is_none()) {
            println!("  stage `{stage}`: only in A ({} params)", group.len());
        } else {
            for (k, (va, vb)) in group {
                let f = |v: &Option<serde_json::Value>| {
                    v.as_ref().map_or("(unset)".to_owned(), ToString::to_string)
                };
                println!("  {k}: {} -> {}", f(va), f(vb));
            }
        }
    }
}

fn cmd_diff(
    l: &Loaded,
    a: &str,
    b: &str,
    json: bool,
    html: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    let store = l.store()?;
    let rows = index::read_all(&store.index_dir()).context("reading the run index")?;
    let d = diff::diff(
        diff::side(&l.pipe, &l.registry, &rows, a)?,
        diff::side(&l.pipe, &l.registry, &rows, b)?,
    );
    if let Some(path) = html {
        std::fs::write(path, spo_report::diff_page::render(&l.pipe.name, &d))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&d)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "A = {} ({} seeds)\nB = {} ({} seeds)",
        d.a.label,
        d.a.seeds.len(),
        d.b.label,
        d.b.seeds.len()
    );
    if d.params.is_empty() {
        println!("\nparams: identical");
    } else {
        println!("\nparams that differ:");
        print_param_diff(&d.params);
    }
    println!(
        "\n{:<24} {:>22} {:>22} {:>10}  95% CI of B - A",
        "metric", "A mean ± std (n)", "B mean ± std (n)", "B - A"
    );
    let f = |s: &Option<spo_core::stats::Summary>| {
        s.map_or("—".to_owned(), |s| {
            format!("{:.4} ± {:.4} ({})", s.mean, s.std, s.n)
        })
    };
    for m in &d.metrics {
        let ci = m.ci95.map_or("—".to_owned(), |(lo, hi)| {
            format!(
                "[{lo:.4}, {hi:.4}]{}",
                if m.paired { " paired" } else { "" }
            )
        });
        let delta = m.delta.map_or("—".to_owned(), |x| format!("{x:+.4}"));
        println!(
            "{:<24} {:>22} {:>22} {:>10}  {ci}",
            m.metric,
            f(&m.a),
            f(&m.b),
            delta
        );
    }
    Ok(ExitCode::SUCCESS)
}
