//! The `spo-pipe` command line: the orchestrator's verbs over a pipeline.toml and a `runs/` store.
//!
//! Exit codes: 0 success; 1 a stage failed, a table has missing cells, or `verify` found damage;
//! 2 the command line or the pipeline is invalid (nothing ran).

mod cli;
mod commands;
mod parquet_head;
mod pin;
mod pipeline;
mod relaunch;
mod remote;
mod report;
mod score;
mod slurm;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::Cli;

/// Errors that mean "the command line or the pipeline is wrong": exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(String);

fn main() -> ExitCode {
    // candle's CPU thread pool spin-waits at every op's barrier; on a shared or loaded machine a
    // stalled worker makes every op wait (measured here: 7 min vs 23 s for the same stage).
    // spo-pipe parallelises across cells instead (`--jobs`); CANDLE_NUM_THREADS overrides.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: first statement of main, before any thread exists.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
    let cli = Cli::parse();
    if cli.command.only_prints() {
        // Rust ignores SIGPIPE, so `println!` panics once a reader such as `head` has gone; a
        // read-only verb should end as `cat` does. (Verbs that write the store keep ignoring it.)
        // SAFETY: restoring a signal's default disposition, before any thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let filter = match cli.verbose {
        0 if cli.quiet => "error",
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .with_writer(std::io::stderr)
        .without_time()
        .init();
    spo_stages::init_runtime();
    match commands::dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            let usage = e.downcast_ref::<spo_core::ConfigError>().is_some()
                || e.downcast_ref::<spo_core::PlanError>().is_some()
                || e.downcast_ref::<UsageError>().is_some();
            eprintln!("error: {e:#}");
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}
