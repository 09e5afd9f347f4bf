//! spo-report: the experiment as a static web page, read from the content-addressed store.
//!
//! [`build`] renders, for the cells of some targets: every table they compute (mean ± std, n,
//! and each row against the first with a paired 95% bootstrap interval), the same prompts'
//! images side by side across the tables' rows and seeds with their scores, every training log
//! as SVG curves with seeds overlaid, each sweep's metrics against the swept param, the stage
//! graph with every cell's state, and one page per cell. The site is self-contained (works from
//! `file://`); building it writes nothing into the store. [`serve`] serves it on localhost and
//! rebuilds it as a run makes progress.
//!
//! It knows nothing of diffusion: it recognises files by their columns (see [`files::Shape`]).

mod cells;
mod columns;
mod context;
mod curves;
pub mod diff_page;
mod error;
pub mod files;
mod html;
mod samples;
mod serve;
pub mod site;
mod svg;
mod sweeps;
mod tables;

use std::fmt::Write;

use spo_core::{Pipeline, Registry, Store};

pub use error::{Error, Result};
pub use serve::serve;
pub use site::Site;

use crate::context::Ctx;
use crate::html::{Frame, STYLE, esc, page};

/// Prompts per table on the samples page unless asked otherwise.
pub const DEFAULT_PROMPTS: usize = 12;

/// What to report on.
#[derive(Debug, Clone)]
pub struct Options {
    /// Targets, as `spo-pipe run` takes them (empty: the pipeline's default).
    pub targets: Vec<String>,
    /// Prompts per table on the samples page.
    pub prompts: usize,
    /// Pages reload themselves while a run is live (for `--serve`).
    pub live_reload: bool,
}

/// What a built report holds.
#[derive(Debug, Clone)]
pub struct Summary {
    pub pages: usize,
    pub files: usize,
    /// Cells or files the report could not show (missing, damaged, changed since commit).
    pub problems: Vec<String>,
    /// Cells of the targets not in the store.
    pub not_computed: usize,
}

/// Renders the report of `opts.targets` from `store`.
pub fn build(
    pipe: &Pipeline,
    registry: &Registry,
    store: &Store,
    opts: &Options,
) -> Result<(Site, Summary)> {
    let cx = Ctx::new(pipe, registry, store, opts)?;
    let mut site = Site::default();
    site.put("assets/style.css", STYLE);
    let frame = |root| Frame {
        pipeline: &pipe.name,
        root,
        refresh: opts.live_reload && cx.live,
    };
    let tables = tables::section(&cx)?;
    let samples = samples::page(&cx, &mut site);
    site.put("samples.html", page(frame(""), "Samples", &samples));
    site.put(
        "curves.html",
        page(frame(""), "Training curves", &curves::page(&cx)),
    );
    site.put("sweeps.html", page(frame(""), "Sweeps", &sweeps::page(&cx)));
    site.put("dag.html", page(frame(""), "Cells", &cells::dag_page(&cx)));
    cells::cell_pages(&cx, &mut site, frame("../"));
    // Last, so that it lists the problems every other page found.
    let mut index = format!(
        "<p>{} · store <code>{}</code>{}</p>\n",
        tables::counts(&cx),
        esc(&store.root().display().to_string()),
        if cx.live {
            " · <b>a run is in progress</b>"
        } else {
            ""
        }
    );
    let problems = cx.problems();
    if !problems.is_empty() {
        let _ = write!(
            index,
            "<div class=\"warn\"><b>{} problems in the store</b> (run <code>spo-pipe verify</code>; \
             <code>--repair</code> quarantines damaged cells so the next run recomputes them):<ul>",
            problems.len()
        );
        for p in &problems {
            let _ = write!(index, "<li>{}</li>", esc(p));
        }
        index.push_str("</ul></div>\n");
    }
    index.push_str(&tables);
    site.put("index.html", page(frame(""), "Tables", &index));
    let summary = Summary {
        pages: site.paths().filter(|p| p.ends_with(".html")).count(),
        files: site.paths().count(),
        problems,
        not_computed: cx
            .cells
            .iter()
            .filter(|c| c.status != context::Status::Done)
            .count(),
    };
    Ok((site, summary))
}
