//! `push` and `pull`: the store's cells to and from a remote cache (docs/remote.md).

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use indicatif::{MultiProgress, ProgressDrawTarget};
use spo_core::Event;
use spo_core::explain::{self, State};
use spo_core::run::{self, RunOptions};
use spo_remote::Remote;

use crate::UsageError;
use crate::commands::{plan, short};
use crate::pipeline::Loaded;

/// Opens the remote cache at `url`.
pub fn open(url: &str) -> anyhow::Result<Arc<Remote>> {
    Ok(Arc::new(Remote::open(url)?))
}

/// `--remote`, else `[cache] remote` of the pipeline.
fn url(l: &Loaded, flag: Option<String>) -> anyhow::Result<String> {
    flag.or_else(|| l.pipe.remote.clone()).ok_or_else(|| {
        UsageError(format!(
            "no remote cache: give --remote URL or set `[cache] remote = \"s3://bucket/prefix\"` in {}",
            l.pipe.file
        ))
        .into()
    })
}

pub fn cmd_push(
    l: &Loaded,
    targets: &[String],
    all: bool,
    remote: Option<String>,
    quiet: bool,
) -> anyhow::Result<ExitCode> {
    let url = url(l, remote)?;
    let store = l.store()?;
    let (keys, not_local) = if all {
        (store.keys()?, 0)
    } else {
        let plan = plan(l, targets)?;
        let st = explain::status(&l.registry, &store, &plan)?;
        let mut keys = BTreeSet::new();
        let mut not_local = 0;
        for s in &st {
            match (&s.state, &s.key) {
                (State::Cached, Some(k)) => {
                    keys.insert(k.clone());
                }
                _ => not_local += 1,
            }
        }
        (keys.into_iter().collect(), not_local)
    };
    let r = open(&url)?;
    let t0 = std::time::Instant::now();
    let s = r.push(&store, &keys, &|m, uploaded| {
        if uploaded && !quiet {
            eprintln!("⇡ pushed   {}  {}", m.label, short(&m.key));
        }
    })?;
    if !quiet {
        eprintln!(
            "pushed {} cells ({} blobs, {} bytes; {} blobs already there) to {url}, {} already there ({:.2}s)",
            s.cells,
            s.blobs,
            s.bytes,
            s.blobs_present,
            s.present,
            t0.elapsed().as_secs_f64()
        );
        if not_local > 0 {
            eprintln!("{not_local} cells of the targets are not in the store (run them first)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn cmd_pull(
    l: &Loaded,
    targets: &[String],
    remote: Option<String>,
    jobs: usize,
    quiet: bool,
) -> anyhow::Result<ExitCode> {
    let url = url(l, remote)?;
    let store = l.store()?;
    let plan = plan(l, targets)?;
    let r = open(&url)?;
    let say = |line: String| {
        if !quiet {
            eprintln!("{line}");
        }
    };
    let on = |e: Event<'_>| match e {
        Event::Fetched(n, k) => say(format!("⇣ fetched  {}  {}", n.display(), short(k))),
        Event::Absent(n) => say(format!("- absent   {}  (not in {url})", n.display())),
        Event::Failed(n, m) => say(format!("✗ failed   {}: {m}", n.display())),
        _ => {}
    };
    let draw = if quiet || !std::io::stderr().is_terminal() {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    let opts = RunOptions {
        jobs,
        dry_run: false,
        keep_going: true,
        progress: MultiProgress::with_draw_target(draw),
        remote: Some(r as _),
        fetch_only: true,
        ..RunOptions::default()
    };
    let t0 = std::time::Instant::now();
    let s = run::run(&l.pipe, &l.registry, &store, &plan, &opts, &on)?;
    say(format!(
        "{} cells: {} fetched, {} already here, {} not in the remote, {} skipped (an input is not in the remote), {} failed ({:.2}s)",
        plan.nodes.len(),
        s.fetched,
        s.cached,
        s.absent.len(),
        s.skipped,
        s.failed.len(),
        t0.elapsed().as_secs_f64()
    ));
    Ok(crate::commands::exit_for(&s.failed))
}
