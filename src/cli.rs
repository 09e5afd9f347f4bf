//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Run the SPO paper's experiments as a content-addressed DAG of stages.
#[derive(Debug, Parser)]
#[command(name = "spo-pipe", version, about, long_about = None)]
pub struct Cli {
    /// The pipeline file (default: ./pipeline.toml, else the embedded default pipeline).
    #[arg(long, short = 'p', global = true, value_name = "FILE")]
    pub pipeline: Option<PathBuf>,
    /// The store directory (default: `runs/` beside the pipeline file).
    #[arg(long, global = true, value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// More logging (-v: info, -vv: debug); RUST_LOG overrides.
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// Override a param: `--set stage.param=value` (a TOML value), or `--set pipeline.seeds=[0,1]`.
    /// Applies to every verb, so tables and diffs find the cells a run with the same overrides made.
    #[arg(long = "set", global = true, value_name = "STAGE.PARAM=VALUE")]
    pub set: Vec<String>,
    /// Where model stages compute: cpu, cuda or cuda:N [default: CUDA device 0 when this build
    /// has CUDA and sees a GPU, else the CPU]. Not part of any cell's key.
    #[arg(long, global = true, value_name = "DEVICE", env = "SPO_PIPE_DEVICE")]
    pub device: Option<String>,
    /// The memory a model cell may count on, e.g. `24G` [default: what the device has free];
    /// a cell whose estimated need exceeds it is refused before it loads anything.
    #[arg(
        long,
        global = true,
        value_name = "SIZE",
        env = "SPO_PIPE_DEVICE_MEMORY"
    )]
    pub device_memory: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

/// Overrides and targets shared by the verbs that plan.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Stages, sweeps, tables, targets, or cells such as `score@spo.k=3` (default: the pipeline's default).
    pub targets: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Compute every cell the targets need that the store does not have.
    Run {
        #[command(flatten)]
        plan: PlanArgs,
        /// Cores to use: cells computed at once, and threads lent to a cell computing with
        /// cores to spare (its results do not depend on them) [default: this machine's cores]
        #[arg(long, short, value_parser = clap::value_parser!(u64).range(1..))]
        jobs: Option<u64>,
        /// Say what would run, and why, without running it.
        #[arg(long, short = 'n')]
        dry_run: bool,
        /// After a failure, go on with everything that does not depend on it.
        #[arg(long, short)]
        keep_going: bool,
        /// Do not print the targets' tables and write the report at the end.
        #[arg(long)]
        no_report: bool,
        /// Fetch missing cells from this remote cache before computing them (overrides
        /// `[cache] remote` in pipeline.toml): `s3://bucket/prefix`, `gs://bucket/prefix`,
        /// `az://container/prefix` or `file:///dir`.
        #[arg(long, value_name = "URL", conflicts_with = "no_remote")]
        remote: Option<String>,
        /// Do not consult the remote cache of pipeline.toml.
        #[arg(long)]
        no_remote: bool,
        /// Where cells run: `local` processes, or one `slurm` job per cell (overrides
        /// `[executor] kind`; resources from `[executor]`, see docs/slurm.md).
        #[arg(long, value_enum)]
        executor: Option<ExecutorKind>,
        /// Compute only the cell with this key (what each Slurm job runs).
        #[arg(long, value_name = "KEY", hide = true)]
        only_key: Option<String>,
    },
    /// Upload the targets' committed cells to the remote cache (blobs, then manifests; each
    /// only if absent, so concurrent pushes are safe).
    Push {
        #[command(flatten)]
        plan: PlanArgs,
        /// Every committed cell of the store, not only the targets'.
        #[arg(long, conflicts_with = "targets")]
        all: bool,
        /// The remote cache (default: `[cache] remote` in pipeline.toml).
        #[arg(long, value_name = "URL")]
        remote: Option<String>,
    },
    /// Fetch the targets' cells from the remote cache into the store, each checked against its
    /// manifest before it is committed; computes nothing.
    Pull {
        #[command(flatten)]
        plan: PlanArgs,
        /// The remote cache (default: `[cache] remote` in pipeline.toml).
        #[arg(long, value_name = "URL")]
        remote: Option<String>,
        /// Cells fetched at once [default: this machine's cores]
        #[arg(long, short, value_parser = clap::value_parser!(u64).range(1..))]
        jobs: Option<u64>,
    },
    /// Each cell of the targets: cached, stale (and what changed) or missing.
    Status {
        #[command(flatten)]
        plan: PlanArgs,
        #[arg(long)]
        json: bool,
    },
    /// Why a cell would run: the diff of its key against its last run.
    Why {
        /// A stage or cell, e.g. `spm` or `spo@k=3`.
        cell: String,
        /// The seed, for seeded cells (default: every seed).
        #[arg(long)]
        seed: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// The stage graph.
    Dag {
        #[arg(long, short, value_enum, default_value_t = DagFormat::Text)]
        format: DagFormat,
    },
    /// A committed cell's manifest: params, inputs, files, metrics, timings.
    Show {
        /// A key (or prefix of 6+ hex digits), a stage, or a cell like `spo@k=3`.
        what: String,
        /// The seed, for seeded cells (default: the first).
        #[arg(long)]
        seed: Option<u64>,
        /// Also print the first N rows of each Parquet file.
        #[arg(long, value_name = "N")]
        head: Option<usize>,
        #[arg(long)]
        json: bool,
    },
    /// Remove committed cells and checkpoints that no target reaches and no live run uses.
    Gc {
        /// Targets whose cells to keep (default: every stage, sweep, table and target).
        targets: Vec<String>,
        #[arg(long, short = 'n')]
        dry_run: bool,
    },
    /// Re-hash every committed file and read every record; report anything damaged.
    Verify {
        /// Move damaged cells (with their index rows) and unreadable records into
        /// runs/quarantine/, so the next run recomputes them; nothing else is touched.
        #[arg(long)]
        repair: bool,
    },
    /// Render the pipeline's tables from the run index (runs nothing).
    Tables {
        /// Table names (default: all).
        names: Vec<String>,
        #[arg(long, short, value_enum, default_value_t = TableFormat::Md)]
        format: TableFormat,
    },
    /// Compare two cells: params, and metrics as mean ± std over seeds with a 95% bootstrap CI.
    Diff {
        /// A cell (`spo@k=3`, a stage) or a key / cell-id prefix.
        a: String,
        b: String,
        #[arg(long)]
        json: bool,
        /// Also write the comparison as one self-contained HTML page.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
    },
    /// The experiment as a static web page: tables, samples, curves, sweeps, every cell.
    Report {
        #[command(flatten)]
        plan: PlanArgs,
        /// Where to write it (default: `report/` beside the store); replaces a previous report.
        #[arg(long, short, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Serve it on localhost instead, rebuilt as a run progresses.
        #[arg(long)]
        serve: bool,
        /// The port for --serve (0: any free port).
        #[arg(long, default_value_t = 8000)]
        port: u16,
        /// Prompts per table on the samples page.
        #[arg(long, default_value_t = spo_report::DEFAULT_PROMPTS as u64, value_parser = clap::value_parser!(u64).range(1..))]
        prompts: u64,
    },
    /// The stage kinds this binary knows, with their params.
    Kinds,
    /// Print a `hub` stage pinning every file of a local copy of a repo at one commit (e.g. a
    /// `huggingface-cli download --revision <commit>` snapshot), each by its SHA-256.
    Pin {
        /// The folder (symlinks into a blob cache are followed; hidden entries are skipped).
        dir: PathBuf,
        /// The repository, `owner/name`.
        #[arg(long)]
        repo: String,
        /// The commit the folder holds (40 hex digits).
        #[arg(long)]
        revision: String,
        /// The stage's name.
        #[arg(long, default_value = "weights")]
        name: String,
        /// Leave out paths containing this text (repeatable), e.g. `.fp16.` or `safety_checker/`.
        #[arg(long)]
        exclude: Vec<String>,
        /// A dataset repository.
        #[arg(long)]
        dataset: bool,
        /// Have the stage copy the files from this folder when it runs, not fetch them.
        #[arg(long)]
        local: bool,
    },
    /// Score images with a released scorer, outside any pipeline, into a Parquet of scores.
    Score {
        /// pickscore, hpsv2, imagereward, aesthetic or clipscore.
        #[arg(long)]
        metric: String,
        /// The scorer's released files (a folder or a file; see docs/clip.md).
        #[arg(long)]
        weights: PathBuf,
        /// A folder of images (png/jpg/webp), or a Parquet with image bytes and prompts.
        #[arg(long)]
        images: PathBuf,
        /// For a folder: a text file with one prompt per image, in file-name order.
        #[arg(long)]
        prompts: Option<PathBuf>,
        /// For a Parquet: the column of image bytes.
        #[arg(long, default_value = "image")]
        image_column: String,
        /// For a Parquet: the column of prompts.
        #[arg(long, default_value = "prompt")]
        prompt_column: String,
        /// Where to write the per-image scores.
        #[arg(long, short, default_value = "scores.parquet")]
        out: PathBuf,
        /// Images per forward pass.
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
        batch: u64,
    },
}

impl Command {
    /// Whether the verb only prints what it reads (a reader that goes away, as `| head` does,
    /// should end it quietly, not make it panic on a broken pipe).
    pub fn only_prints(&self) -> bool {
        match self {
            Command::Status { .. }
            | Command::Why { .. }
            | Command::Dag { .. }
            | Command::Show { .. }
            | Command::Tables { .. }
            | Command::Kinds
            | Command::Pin { .. } => true,
            Command::Diff { html, .. } => html.is_none(),
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExecutorKind {
    Local,
    Slurm,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DagFormat {
    Text,
    Dot,
    Mermaid,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TableFormat {
    Md,
    Latex,
    Csv,
}
