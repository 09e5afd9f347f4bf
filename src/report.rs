//! `report`, and how `run` ends: the tables its targets compute, and the report's path.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use spo_core::{Plan, Store, tables};
use spo_report::Options;

use crate::UsageError;
use crate::pipeline::Loaded;

/// Above this many cells `run` leaves the report to `spo-pipe report` (its pages would take
/// longer to write than a cached run takes to check).
const RUN_REPORT_MAX_CELLS: usize = 5_000;

/// The report's default place, beside the store: `report/` for a store named `runs` (the
/// default), else `<store>-report/`.
pub fn default_dir(store_dir: &Path) -> PathBuf {
    let name = store_dir
        .file_name()
        .map_or_else(|| "runs".into(), |n| n.to_string_lossy().into_owned());
    let name = if name == "runs" {
        "report".to_owned()
    } else {
        format!("{name}-report")
    };
    match store_dir.parent() {
        Some(p) => p.join(name),
        None => PathBuf::from(name),
    }
}

pub fn cmd_report(
    l: &Loaded,
    targets: Vec<String>,
    out: Option<PathBuf>,
    serve: Option<u16>,
    prompts: usize,
) -> anyhow::Result<ExitCode> {
    if !l.store_dir.is_dir() {
        return Err(UsageError(format!(
            "no store at {}: run `spo-pipe run` first, or pass --store",
            l.store_dir.display()
        ))
        .into());
    }
    // Targets that name nothing are a usage error (exit 2), before anything is read.
    Plan::build(&l.pipe, &l.registry, &targets)?;
    let store = l.store()?;
    let opts = Options {
        targets,
        prompts,
        live_reload: serve.is_some(),
    };
    if let Some(port) = serve {
        spo_report::serve(
            port,
            || spo_report::build(&l.pipe, &l.registry, &store, &opts).map(|(site, _)| site),
            |addr| eprintln!("serving the report on http://{addr}/ (Ctrl-C stops)"),
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    let out = out.unwrap_or_else(|| default_dir(&l.store_dir));
    let t0 = Instant::now();
    let (site, summary) = spo_report::build(&l.pipe, &l.registry, &store, &opts)?;
    site.write(&out)?;
    eprintln!(
        "wrote the report to {} ({} pages, {} files, {:.2}s){}",
        out.join("index.html").display(),
        summary.pages,
        summary.files,
        t0.elapsed().as_secs_f64(),
        if summary.not_computed > 0 {
            format!(
                "; {} cells of the targets are not computed",
                summary.not_computed
            )
        } else {
            String::new()
        }
    );
    for p in &summary.problems {
        eprintln!("warning: {p}");
    }
    if summary.problems.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "run `spo-pipe verify` to check the store; `--repair` quarantines what is damaged"
        );
        Ok(ExitCode::from(1))
    }
}

/// Prints the tables `plan`'s targets compute and writes the report; failures are warnings,
/// since the run itself is done.
pub fn after_run(l: &Loaded, store: &Store, plan: &Plan, targets: &[String]) {
    if plan.nodes.len() > RUN_REPORT_MAX_CELLS {
        eprintln!(
            "{} cells: see the results with `spo-pipe tables` and `spo-pipe report`",
            plan.nodes.len()
        );
        return;
    }
    let shown = || -> anyhow::Result<Vec<String>> {
        let index = spo_core::index::read_metrics(&store.index_dir())?;
        tables::computed_by(&l.pipe, &l.registry, plan)?
            .into_iter()
            .map(|t| Ok(tables::render(&l.pipe, &l.registry, t, &index, tables::Format::Md)?.text))
            .collect()
    };
    match shown() {
        Ok(ts) => {
            for t in ts {
                println!("\n{t}");
            }
        }
        Err(e) => eprintln!("warning: the tables could not be rendered: {e:#}"),
    }
    let out = default_dir(&l.store_dir);
    let opts = Options {
        targets: targets.to_vec(),
        prompts: spo_report::DEFAULT_PROMPTS,
        live_reload: false,
    };
    match spo_report::build(&l.pipe, &l.registry, store, &opts)
        .and_then(|(site, _)| site.write(&out))
    {
        Ok(()) => eprintln!(
            "report: {} (`spo-pipe report --serve` to browse it on localhost)",
            out.join("index.html").display()
        ),
        Err(e) => eprintln!("warning: the report could not be written: {e}"),
    }
}
