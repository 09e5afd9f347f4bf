//! What every page reads: the plan of the targets, each cell's state, the run index, and the
//! committed manifests (read once), with the problems found on the way.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use spo_core::explain::{self, State};
use spo_core::index;
use spo_core::tables::{self, TableData};
use spo_core::{Manifest, Pipeline, Plan, Registry, Store, TableDef};

use crate::Options;
use crate::error::Result;

/// A cell's state as the report shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Done,
    /// A live process is computing it now.
    Running,
    /// Not computed, while a run is live (it may be waiting for its inputs).
    Queued,
    /// Computed before, but its key changed since.
    Stale,
    Missing,
    Damaged,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Done => "cached",
            Status::Running => "running",
            Status::Queued => "queued",
            Status::Stale => "stale",
            Status::Missing => "missing",
            Status::Damaged => "damaged",
        }
    }

    /// A badge for the page.
    pub fn badge(self) -> String {
        format!("<span class=\"st {0}\">{0}</span>", self.name())
    }
}

/// One cell of the plan.
#[derive(Debug, Clone)]
pub struct CellView {
    pub status: Status,
    /// The key of the run whose files the report shows: the current key when cached, else the
    /// latest run of the cell in the index (if any).
    pub run_key: Option<String>,
    /// Its page, from the site's root.
    pub page: String,
}

pub struct Ctx<'a> {
    pub pipe: &'a Pipeline,
    pub registry: &'a Registry,
    pub store: &'a Store,
    pub opts: &'a Options,
    pub plan: Plan,
    /// Per plan node.
    pub cells: Vec<CellView>,
    /// The tables the targets compute, in the pipeline's order, with their numbers.
    pub tables: Vec<(&'a TableDef, TableData)>,
    /// Whether a run is live on the store.
    pub live: bool,
    /// The plan node whose shown run has a key.
    by_key: BTreeMap<String, usize>,
    manifests: RefCell<BTreeMap<String, Option<Manifest>>>,
    problems: RefCell<BTreeSet<String>>,
}

impl<'a> Ctx<'a> {
    pub fn new(
        pipe: &'a Pipeline,
        registry: &'a Registry,
        store: &'a Store,
        opts: &'a Options,
    ) -> Result<Ctx<'a>> {
        let plan = Plan::build(pipe, registry, &opts.targets)?;
        let states = explain::status(registry, store, &plan)?;
        let computing = store.computing()?;
        let live = spo_core::live::live_runs(store)? > 0;
        let index = index::read_metrics(&store.index_dir())?;
        let mut latest: BTreeMap<(&str, Option<u64>), &str> = BTreeMap::new();
        for r in &index {
            latest.insert((r.cell.as_str(), r.seed), r.key.as_str());
        }
        let cells: Vec<CellView> = plan
            .nodes
            .iter()
            .zip(&states)
            .map(|(n, s)| {
                let running = s.key.as_ref().is_some_and(|k| computing.contains(k));
                let status = match s.state {
                    State::Cached => Status::Done,
                    State::Damaged => Status::Damaged,
                    _ if running => Status::Running,
                    _ if live => Status::Queued,
                    State::Stale => Status::Stale,
                    State::Missing => Status::Missing,
                };
                let run_key = match s.state {
                    State::Cached => s.key.clone(),
                    _ => latest
                        .get(&(n.cell.as_str(), n.seed))
                        .map(|k| (*k).to_owned()),
                };
                CellView {
                    status,
                    run_key,
                    page: format!(
                        "cells/{}{}.html",
                        &n.cell[..n.cell.len().min(12)],
                        n.seed.map_or(String::new(), |s| format!("-{s}"))
                    ),
                }
            })
            .collect();
        let tables = tables::computed_by(pipe, registry, &plan)?
            .into_iter()
            .map(|t| Ok((t, tables::compute(pipe, registry, t, &index)?)))
            .collect::<Result<_>>()?;
        let by_key = cells
            .iter()
            .enumerate()
            .filter_map(|(i, c)| Some((c.run_key.clone()?, i)))
            .collect();
        Ok(Ctx {
            pipe,
            registry,
            store,
            opts,
            plan,
            cells,
            by_key,
            tables,
            live,
            manifests: RefCell::default(),
            problems: RefCell::default(),
        })
    }

    /// The manifest of the committed cell `key`; a missing or unreadable one is a problem.
    pub fn manifest(&self, key: &str) -> Option<Manifest> {
        if let Some(m) = self.manifests.borrow().get(key) {
            return m.clone();
        }
        let dir = self.store.cell_dir(key);
        let m = if dir.is_dir() {
            Manifest::read(&dir)
                .map_err(|e| self.problem(format!("{e}")))
                .ok()
        } else {
            self.problem(format!(
                "cell {} is in the run index but not in the store (removed by `gc`, or quarantined)",
                &key[..key.len().min(12)]
            ));
            None
        };
        self.manifests
            .borrow_mut()
            .insert(key.to_owned(), m.clone());
        m
    }

    /// Records something the report could not show as it should.
    pub fn problem(&self, p: String) {
        self.problems.borrow_mut().insert(p);
    }

    pub fn problems(&self) -> Vec<String> {
        self.problems.borrow().iter().cloned().collect()
    }

    /// The stages the plan has cells of, in pipeline order (indices into `pipe.stages`).
    pub fn stages(&self) -> Vec<usize> {
        let mut stages: Vec<usize> = self.plan.nodes.iter().map(|n| n.stage).collect();
        stages.sort_unstable();
        stages.dedup();
        stages
    }

    /// The page of the cell whose shown run is `key`, if it is in the plan.
    pub fn page_of_key(&self, key: &str) -> Option<&str> {
        self.by_key.get(key).map(|&i| self.cells[i].page.as_str())
    }
}
