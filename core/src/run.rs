//! Running a plan: resolve each cell's key from its inputs' content digests, take what the store
//! has, compute the rest (in parallel up to `jobs`), commit each atomically.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::config::Pipeline;
use crate::cores::CoreBudget;
use crate::error::Error;
use crate::index;
use crate::key::{CellKey, KeyView};
use crate::live::LiveRun;
use crate::manifest::{FileEntry, InputRef, Manifest};
use crate::param::Params;
use crate::plan::{Node, Plan, bare};
use crate::record::Recorder;
use crate::registry::Registry;
use crate::remote::{RemoteCache, RemoteFailure};
use crate::stage::{Input, StageContext, StageError, StageKind};
use crate::store::{Committed, Lookup, Pointer, Store};

/// How to run.
#[derive(Clone)]
pub struct RunOptions {
    /// Cores to use: cells computed at once, and the threads a cell with cores to spare may
    /// use (`StageContext::threads`).
    pub jobs: usize,
    /// Only say what would run.
    pub dry_run: bool,
    /// After a failure, go on with everything that does not depend on it.
    pub keep_going: bool,
    /// Where progress bars draw (hidden in tests).
    pub progress: MultiProgress,
    /// A remote cache to fetch a missing cell from before computing it.
    pub remote: Option<Arc<dyn RemoteCache>>,
    /// Only fetch (`spo-pipe pull`): a cell neither local nor in the remote is not computed
    /// but reported [`Event::Absent`], and the cells downstream of it are skipped.
    pub fetch_only: bool,
    /// Compute only the cell with this key (a Slurm job of `run --executor slurm`): every
    /// other cell missing from the store is reported [`Event::Absent`], not computed.
    pub only_key: Option<String>,
    /// Cells another process computes: given a missing cell's node id and key, `Some` with how
    /// that process ended (it claims, computes and commits the key itself; this run then takes
    /// the committed cell), `None` for a cell this process computes. The binary gives a cell
    /// whose `[executor]` device is not the run's own to a child `spo-pipe` on that device.
    pub elsewhere: Option<Arc<Elsewhere>>,
}

/// See [`RunOptions::elsewhere`].
pub type Elsewhere = dyn Fn(usize, &str) -> Option<Result<(), String>> + Send + Sync;

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            jobs: 1,
            dry_run: false,
            keep_going: false,
            progress: MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden()),
            remote: None,
            fetch_only: false,
            only_key: None,
            elsewhere: None,
        }
    }
}

/// What happened to a cell, reported as it happens.
#[derive(Debug)]
pub enum Event<'a> {
    /// Already in the store.
    Cached(&'a Node, &'a str),
    /// Another process holds the cell's lock; waiting for it.
    Waiting(&'a Node),
    Started(&'a Node),
    Finished(&'a Node, &'a str, f64),
    Failed(&'a Node, &'a str),
    /// Not run because an input failed.
    Skipped(&'a Node),
    /// `--dry-run`: would be computed.
    WouldRun(&'a Node),
    /// Fetched from the remote cache and committed (its key).
    Fetched(&'a Node, &'a str),
    /// The remote's entry for the cell was bad (a missing or corrupt blob): nothing of it was
    /// committed, and the cell is computed here (the message names what and where).
    BadRemote(&'a Node, &'a str),
    /// Fetch only: neither in the store nor in the remote cache.
    Absent(&'a Node),
}

/// The outcome of a run.
#[derive(Debug, Default)]
pub struct RunSummary {
    pub cached: usize,
    pub ran: usize,
    pub would_run: usize,
    /// Fetched from the remote cache.
    pub fetched: usize,
    /// Fetch only: the labels of cells neither local nor in the remote cache.
    pub absent: Vec<String>,
    pub skipped: usize,
    /// (cell label, error) of each failed cell.
    pub failed: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum St {
    Pending,
    Running,
    Done,
    Failed,
}

/// The scheduler's state, under one mutex. Event-driven: each completion decrements its
/// dependents' counters of unfinished inputs and queues those that reach zero, so dispatch and
/// completion cost O(log n) plus the node's out-degree, never a scan of the plan.
struct Sched {
    state: Vec<St>,
    /// Each done node's cell, until the last node reading it has started.
    resolved: HashMap<usize, Committed>,
    /// Per node, how many of the nodes reading it have not started yet.
    readers_left: Vec<usize>,
    /// Per node, how many of its inputs are not done yet.
    unfinished: Vec<usize>,
    /// `dependents[dep_start[j]..dep_start[j + 1]]`: the nodes reading node `j`.
    dep_start: Vec<usize>,
    dependents: Vec<usize>,
    /// Pending nodes whose inputs are all done, lowest id (plan order) first.
    ready: BinaryHeap<Reverse<usize>>,
    /// Ready nodes whose keys this run protected and found missing, with their inputs and
    /// key parts: each is claimed and computed alone.
    deferred: HashMap<usize, (Vec<Committed>, CellKey)>,
    running: usize,
    stop: bool,
    summary: RunSummary,
}

impl Sched {
    fn new(plan: &Plan) -> Sched {
        let n = plan.nodes.len();
        let mut dep_start = vec![0; n + 1];
        for node in &plan.nodes {
            for &j in &node.inputs {
                dep_start[j + 1] += 1;
            }
        }
        for j in 0..n {
            dep_start[j + 1] += dep_start[j];
        }
        let mut fill = dep_start.clone();
        let mut dependents = vec![0; dep_start[n]];
        for (i, node) in plan.nodes.iter().enumerate() {
            for &j in &node.inputs {
                dependents[fill[j]] = i;
                fill[j] += 1;
            }
        }
        let unfinished: Vec<usize> = plan.nodes.iter().map(|n| n.inputs.len()).collect();
        let ready = (0..n)
            .filter(|&i| unfinished[i] == 0)
            .map(Reverse)
            .collect();
        Sched {
            state: vec![St::Pending; n],
            resolved: HashMap::new(),
            readers_left: (0..n).map(|j| dep_start[j + 1] - dep_start[j]).collect(),
            unfinished,
            dep_start,
            dependents,
            ready,
            deferred: HashMap::new(),
            running: 0,
            stop: false,
            summary: RunSummary::default(),
        }
    }

    /// The cells of `node`'s inputs, as it starts; each is dropped after its last reader's
    /// copy, so a run holds cells for its frontier, not for the whole plan.
    fn take_inputs(&mut self, node: &Node) -> Vec<Committed> {
        let mut out = Vec::with_capacity(node.inputs.len());
        for &j in &node.inputs {
            self.readers_left[j] -= 1;
            let r = if self.readers_left[j] == 0 {
                self.resolved.remove(&j)
            } else {
                self.resolved.get(&j).cloned()
            };
            out.extend(r);
        }
        out
    }

    /// Starts ready node `id`: a deferred node with what it kept, else a fresh one.
    fn start(&mut self, plan: &Plan, id: usize) -> Job {
        self.state[id] = St::Running;
        self.running += 1;
        match self.deferred.remove(&id) {
            Some((inputs, parts)) => Job {
                id,
                inputs,
                parts: Some(parts),
            },
            None => Job {
                id,
                inputs: self.take_inputs(&plan.nodes[id]),
                parts: None,
            },
        }
    }

    /// Node `id` is done: queue the dependents it was the last unfinished input of.
    fn done(&mut self, id: usize, r: Committed) {
        self.state[id] = St::Done;
        if self.readers_left[id] > 0 {
            self.resolved.insert(id, r);
        }
        for k in self.dep_start[id]..self.dep_start[id + 1] {
            let d = self.dependents[k];
            self.unfinished[d] -= 1;
            if self.unfinished[d] == 0 && self.state[d] == St::Pending {
                self.ready.push(Reverse(d));
            }
        }
    }

    /// Node `id` failed (or, in a dry run, will be computed): every pending node downstream of
    /// it cannot go on. Returns those, in plan order.
    fn failed(&mut self, id: usize) -> Vec<usize> {
        self.state[id] = St::Failed;
        let mut cut = Vec::new();
        let mut stack = vec![id];
        while let Some(j) = stack.pop() {
            for k in self.dep_start[j]..self.dep_start[j + 1] {
                let d = self.dependents[k];
                if self.state[d] == St::Pending {
                    self.state[d] = St::Failed;
                    cut.push(d);
                    stack.push(d);
                }
            }
        }
        cut.sort_unstable();
        cut
    }
}

/// Runs `plan` against `store`.
pub fn run(
    pipe: &Pipeline,
    registry: &Registry,
    store: &Store,
    plan: &Plan,
    opts: &RunOptions,
    on: &(dyn Fn(Event<'_>) + Sync),
) -> Result<RunSummary, Error> {
    let _ = pipe;
    if !opts.dry_run {
        let swept = store.sweep_staging()?;
        if swept > 0 {
            tracing::info!("removed {swept} staging directories left by interrupted runs");
        }
    }
    let n = plan.nodes.len();
    let overall = opts.progress.add(ProgressBar::new(n as u64));
    overall.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} cells {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let sched = Mutex::new(Sched::new(plan));
    let cv = Condvar::new();
    let ex = Exec {
        registry,
        store,
        live: LiveRun::start(store)?,
        plan,
        opts,
        on,
        overall: &overall,
        cores: Arc::new(CoreBudget::new(opts.jobs)),
        recorder: Recorder::new(store, plan),
    };
    let workers = opts.jobs.max(1).min(n.max(1));
    if workers == 1 {
        ex.worker(&sched, &cv, workers);
    } else {
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| ex.worker(&sched, &cv, workers));
            }
        });
    }
    overall.finish_and_clear();
    if !opts.dry_run {
        // Housekeeping: the run's results are committed whether or not this succeeds.
        if let Err(e) = index::compact_if_due(&store.index_dir()) {
            tracing::warn!("could not merge the run index: {e}");
        }
        if let Err(e) = store.cache().merge_if_due(&store.root().join("store")) {
            tracing::warn!("could not merge the cell cache: {e}");
        }
    }
    let g = sched.into_inner().unwrap_or_else(|p| p.into_inner());
    Ok(g.summary)
}

struct Exec<'a> {
    registry: &'a Registry,
    store: &'a Store,
    /// Protects every key this run resolves from `gc` until the run ends.
    live: LiveRun,
    plan: &'a Plan,
    opts: &'a RunOptions,
    on: &'a (dyn Fn(Event<'_>) + Sync),
    overall: &'a ProgressBar,
    cores: Arc<CoreBudget>,
    /// Index rows and slot pointers of the cells this run finds committed.
    recorder: Recorder<'a>,
}

/// Fresh ready nodes a worker resolves together when many are ready: their keys are protected
/// with one write to the live file and one hold of the gate.
const BATCH: usize = 64;

/// A started node: its inputs, and its key parts if it was deferred (protected and missing).
struct Job {
    id: usize,
    inputs: Vec<Committed>,
    parts: Option<CellKey>,
}

enum Outcome {
    Cached(Committed),
    Ran(Committed, f64),
    Fetched(Committed),
    /// Fetch only: not in the remote.
    Absent,
    WouldRun,
    /// Protected and missing: back to the ready queue, to be claimed and computed alone.
    Deferred(Vec<Committed>, CellKey),
    /// The error; `fatal` stops the run even with `--keep-going` (damage in the store).
    Failed {
        message: String,
        fatal: bool,
    },
}

impl Exec<'_> {
    fn worker(&self, sched: &Mutex<Sched>, cv: &Condvar, workers: usize) {
        loop {
            let jobs = {
                let mut g = sched.lock().unwrap_or_else(|p| p.into_inner());
                loop {
                    if !g.stop
                        && let Some(Reverse(id)) = g.ready.pop()
                    {
                        let first = g.start(self.plan, id);
                        if first.parts.is_some() {
                            break vec![first];
                        }
                        // Many fresh nodes ready: take a share of them, up to BATCH.
                        let want = (g.ready.len() / workers).min(BATCH - 1);
                        let mut jobs = vec![first];
                        while jobs.len() <= want {
                            match g.ready.peek() {
                                Some(&Reverse(next)) if !g.deferred.contains_key(&next) => {
                                    g.ready.pop();
                                    jobs.push(g.start(self.plan, next));
                                }
                                _ => break,
                            }
                        }
                        break jobs;
                    }
                    // Nothing ready and nothing running that could make something ready.
                    if g.running == 0 {
                        return;
                    }
                    g = cv.wait(g).unwrap_or_else(|p| p.into_inner());
                }
            };
            let outcomes = match jobs.as_slice() {
                [
                    Job {
                        id,
                        inputs,
                        parts: Some(parts),
                    },
                ] => {
                    self.cores.enter();
                    let o = self.failure(self.claim_and_compute(*id, inputs, parts));
                    self.cores.leave();
                    vec![(*id, o)]
                }
                _ => self.resolve(jobs),
            };
            let mut g = sched.lock().unwrap_or_else(|p| p.into_inner());
            for (id, outcome) in outcomes {
                self.report(&mut g, id, outcome);
            }
            cv.notify_all();
        }
    }

    /// Records what became of node `id`.
    fn report(&self, g: &mut Sched, id: usize, outcome: Outcome) {
        g.running -= 1;
        let node = &self.plan.nodes[id];
        let cut = match outcome {
            Outcome::Cached(r) => {
                g.summary.cached += 1;
                (self.on)(Event::Cached(node, &r.key));
                g.done(id, r);
                vec![]
            }
            Outcome::Ran(r, secs) => {
                g.summary.ran += 1;
                (self.on)(Event::Finished(node, &r.key, secs));
                g.done(id, r);
                vec![]
            }
            Outcome::Fetched(r) => {
                g.summary.fetched += 1;
                (self.on)(Event::Fetched(node, &r.key));
                g.done(id, r);
                vec![]
            }
            Outcome::Absent => {
                (self.on)(Event::Absent(node));
                g.summary.absent.push(node.display());
                g.failed(id)
            }
            Outcome::Deferred(inputs, parts) => {
                g.state[id] = St::Pending;
                g.deferred.insert(id, (inputs, parts));
                g.ready.push(Reverse(id));
                return;
            }
            Outcome::WouldRun => {
                g.summary.would_run += 1;
                (self.on)(Event::WouldRun(node));
                g.failed(id)
            }
            Outcome::Failed { message, fatal } => {
                (self.on)(Event::Failed(node, &message));
                g.summary.failed.push((node.display(), message));
                if fatal || !self.opts.keep_going {
                    g.stop = true;
                }
                g.failed(id)
            }
        };
        // Cells whose inputs failed (or, in a dry run, will be computed) cannot go on.
        for i in cut {
            if self.opts.dry_run {
                g.summary.would_run += 1;
                (self.on)(Event::WouldRun(&self.plan.nodes[i]));
            } else {
                g.summary.skipped += 1;
                (self.on)(Event::Skipped(&self.plan.nodes[i]));
            }
            self.overall.inc(1);
        }
        self.overall.inc(1);
    }

    fn failure(&self, r: Result<Outcome, StageError>) -> Outcome {
        r.unwrap_or_else(|e| Outcome::Failed {
            fatal: match &e {
                StageError::Store(Error::Damaged { .. }) => true,
                StageError::Remote(r) => r.failure == RemoteFailure::Unavailable,
                _ => false,
            },
            message: e.to_string(),
        })
    }

    /// Keys fresh nodes and resolves them together: a committed key is checked and is a cache
    /// hit; a missing one is deferred, to be claimed and computed alone.
    fn resolve(&self, jobs: Vec<Job>) -> Vec<(usize, Outcome)> {
        let mut out = Vec::with_capacity(jobs.len());
        let mut keyed = Vec::with_capacity(jobs.len());
        for j in jobs {
            // Only the key for now: most fresh nodes of a rerun are cache hits, which need
            // their key parts only to record a reuse the index lacks.
            match self.key_view(j.id, &j.inputs).map(|v| v.key()) {
                Ok(key) => keyed.push((j, key)),
                Err(e) => out.push((j.id, self.failure(Err(e)))),
            }
        }
        let keys: Vec<&str> = keyed.iter().map(|(_, k)| k.as_str()).collect();
        let found = if self.opts.dry_run {
            Ok(keys.iter().map(|k| self.store.committed_cell(k)).collect())
        } else {
            self.store.lookup(&self.live, &keys)
        };
        let found: Vec<Result<Option<Committed>, Error>> = match found {
            Ok(f) => f,
            Err(e) => {
                // Nothing was resolved (the live file could not be written): each job fails.
                let message = e.to_string();
                out.extend(keyed.iter().map(|(j, _)| {
                    let (message, fatal) = (message.clone(), false);
                    (j.id, Outcome::Failed { message, fatal })
                }));
                return out;
            }
        };
        for ((j, key), f) in keyed.into_iter().zip(found) {
            let o = match f.map_err(|e| self.damaged(j.id, &key, e)) {
                Err(e) => self.failure(Err(e.into())),
                Ok(None) if self.opts.dry_run => Outcome::WouldRun,
                Ok(None) => match self.key_parts(j.id, &j.inputs) {
                    Ok(parts) => Outcome::Deferred(j.inputs, parts),
                    Err(e) => self.failure(Err(e)),
                },
                Ok(Some(c)) if self.opts.dry_run => Outcome::Cached(c),
                Ok(Some(c)) => {
                    self.failure(self.reuse(j.id, c, || self.key_parts(j.id, &j.inputs)))
                }
            };
            out.push((j.id, o));
        }
        out
    }

    /// A committed key found for node `id`: checked, then recorded as reused (with the key
    /// parts `parts` makes, only where the index lacks the row).
    fn reuse(
        &self,
        id: usize,
        c: Committed,
        parts: impl FnOnce() -> Result<CellKey, StageError>,
    ) -> Result<Outcome, StageError> {
        // A changed or deleted file is no cache hit.
        self.store
            .check_committed(&c)
            .map_err(|e| self.damaged(id, &c.key, e))?;
        self.recorder.reused(id, &c, parts)?;
        Ok(Outcome::Cached(c))
    }

    /// A manifest of node `id`'s key that cannot be read is damage to that cell.
    fn damaged(&self, id: usize, key: &str, e: Error) -> Error {
        match e {
            Error::Corrupt { path, message } => Error::Damaged {
                key: key.to_owned(),
                label: self.plan.nodes[id].label.clone(),
                path,
                problem: message,
            },
            e => e,
        }
    }

    fn key_parts(&self, id: usize, inputs: &[Committed]) -> Result<CellKey, StageError> {
        self.key_view(id, inputs).map(|v| v.to_owned())
    }

    fn key_view<'s>(
        &'s self,
        id: usize,
        inputs: &'s [Committed],
    ) -> Result<KeyView<'s>, StageError> {
        key_view(
            self.registry,
            &self.plan.nodes[id],
            inputs.iter().map(|c| (c.stage.as_str(), c.digest.as_str())),
        )
    }

    /// Claims the key of deferred node `id` (protected, and missing when resolved) and, if it
    /// is still missing, computes and commits the cell.
    fn claim_and_compute(
        &self,
        id: usize,
        inputs: &[Committed],
        parts: &CellKey,
    ) -> Result<Outcome, StageError> {
        let node = &self.plan.nodes[id];
        let kind = self
            .registry
            .get(&node.kind)
            .ok_or_else(|| StageError::Failed(format!("unknown kind `{}`", node.kind)))?;
        let key = parts.key();
        if self.opts.only_key.as_ref().is_some_and(|k| *k != key) {
            return Ok(Outcome::Absent);
        }
        let t0 = Instant::now();
        if let Some(ended) = self.opts.elsewhere.as_ref().and_then(|f| f(id, &key)) {
            return self.computed_elsewhere(id, &key, ended, t0);
        }
        let on_wait = || (self.on)(Event::Waiting(node));
        let mut lock = match self
            .store
            .claim(&key, on_wait)
            .map_err(|e| self.damaged(id, &key, e))?
        {
            Lookup::Hit(c) => return self.reuse(id, c, || Ok(parts.clone())),
            Lookup::Miss(lock) => lock,
        };
        if let Some(remote) = &self.opts.remote {
            match remote.fetch(&key, lock.staging()) {
                Ok(Some(f)) => match lock.check_fetched(&f.manifest) {
                    Ok(()) => {
                        // Checked just now, in the staging directory only this lock reaches.
                        let (_, cell) = lock.commit_cell_as(f.manifest, Some(f.json))?;
                        self.recorder.reused(id, &cell, || Ok(parts.clone()))?;
                        return Ok(Outcome::Fetched(cell));
                    }
                    Err(e) if self.opts.fetch_only => return Err(e.into()),
                    Err(e) => {
                        (self.on)(Event::BadRemote(node, &e.to_string()));
                        lock.reset_staging()?;
                    }
                },
                Ok(None) if self.opts.fetch_only => return Ok(Outcome::Absent),
                Ok(None) => {}
                Err(e) if e.failure == RemoteFailure::Unavailable || self.opts.fetch_only => {
                    return Err(StageError::Remote(e));
                }
                Err(e) => {
                    (self.on)(Event::BadRemote(node, &e.message));
                    lock.reset_staging()?;
                }
            }
        } else if self.opts.fetch_only {
            return Ok(Outcome::Absent);
        }
        // Checked right before use: a cell is never computed from damaged inputs.
        let manifests = inputs
            .iter()
            .map(|c| {
                self.store.check_committed(c)?;
                c.manifest(self.store)
            })
            .collect::<Result<Vec<Manifest>, Error>>()?;
        let mut cx = StageContext {
            stage: node.stage_name.to_string(),
            params: Params::clone(&node.params),
            seed: node.seed,
            inputs: node
                .inputs
                .iter()
                .zip(manifests)
                .map(|(&j, m)| Input {
                    stage: self.plan.nodes[j].stage_name.to_string(),
                    kind: self.plan.nodes[j].kind.to_string(),
                    dir: self.store.cell_dir(&m.key),
                    manifest: m,
                })
                .collect(),
            out_dir: lock.staging().to_owned(),
            scratch_dir: lock.scratch().to_owned(),
            lock: Some(lock.holder()?),
            metrics: BTreeMap::new(),
            written: Vec::new(),
            progress: self.opts.progress.clone(),
            cores: Arc::clone(&self.cores),
        };
        (self.on)(Event::Started(node));
        let started = unix_now();
        let t0 = Instant::now();
        let mut result = run_stage(kind, &mut cx);
        if let Err(StageError::Checkpoint { path, message }) = &result {
            // A checkpoint that cannot be read would fail every rerun: set it aside, start over.
            let to = lock.restart()?;
            tracing::warn!(
                "{}: {}: unreadable checkpoint ({message}); moved the scratch directory to {} and started over",
                node.display(),
                path.display(),
                to.display()
            );
            cx.metrics.clear();
            cx.written.clear();
            result = run_stage(kind, &mut cx);
        }
        // On failure, dropping the lock removes the staging directory and keeps the scratch.
        result?;
        let seconds = t0.elapsed().as_secs_f64();
        let manifest = Manifest {
            key: key.clone(),
            stage: node.stage_name.to_string(),
            kind: node.kind.to_string(),
            version: parts.version,
            cell: node.cell.clone(),
            label: node.label.clone(),
            seed: node.seed,
            params: Params::clone(&node.params),
            inputs: node
                .inputs
                .iter()
                .zip(inputs)
                .map(|(&j, c)| InputRef {
                    stage: self.plan.nodes[j].stage_name.to_string(),
                    key: c.key.clone(),
                    digest: c.digest.clone(),
                })
                .collect(),
            files: cx
                .written
                .iter()
                .map(|w| FileEntry {
                    path: w.path.clone(),
                    sha256: w.sha256.clone(),
                    bytes: w.bytes,
                    info: None,
                })
                .collect(),
            digest: String::new(),
            metrics: cx.metrics.clone(),
            started,
            seconds,
            tool_version: env!("CARGO_PKG_VERSION").to_owned(),
            host: host(),
        };
        let (manifest, cell) = lock.commit_cell(manifest)?;
        index::append(&self.store.index_dir(), &self.recorder.row(id, &manifest))?;
        self.store.write_pointer(
            &node.label,
            node.seed,
            &Pointer {
                key: key.clone(),
                label: node.label.clone(),
                parts: parts.clone(),
                committed: unix_now(),
            },
        )?;
        Ok(Outcome::Ran(cell, seconds))
    }

    /// Node `id` (key `key`, missing and protected by this run) after another process, started
    /// at `t0`, computed it and ended as `ended`: the cell it committed, or why there is none.
    fn computed_elsewhere(
        &self,
        id: usize,
        key: &str,
        ended: Result<(), String>,
        t0: Instant,
    ) -> Result<Outcome, StageError> {
        ended.map_err(StageError::Failed)?;
        match self
            .store
            .committed_cell(key)
            .map_err(|e| self.damaged(id, key, e))?
        {
            Some(cell) => Ok(Outcome::Ran(cell, t0.elapsed().as_secs_f64())),
            None => Err(StageError::Failed(format!(
                "the process it was given to ended without committing {key}"
            ))),
        }
    }
}

/// Runs one attempt of a stage: a panic is a failure, and so is a non-finite metric.
fn run_stage(kind: &dyn StageKind, cx: &mut StageContext) -> Result<(), StageError> {
    let result = catch_unwind(AssertUnwindSafe(|| kind.run(cx))).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default();
        Err(StageError::Failed(format!("the stage panicked: {msg}")))
    });
    result.and_then(|()| match cx.metrics.iter().find(|(_, v)| !v.is_finite()) {
        Some((k, v)) => Err(StageError::Failed(format!("metric `{k}` is {v}"))),
        None => Ok(()),
    })
}

/// The key parts of `node` given its inputs' (stage, content digest), in the order of its
/// `needs`.
pub fn key_parts<'m>(
    registry: &Registry,
    node: &'m Node,
    inputs: impl IntoIterator<Item = (&'m str, &'m str)>,
) -> Result<CellKey, StageError> {
    key_view(registry, node, inputs).map(|v| v.to_owned())
}

/// [`key_parts`], borrowed from `node` and `inputs`: enough to compute the key.
pub fn key_view<'m>(
    registry: &Registry,
    node: &'m Node,
    inputs: impl IntoIterator<Item = (&'m str, &'m str)>,
) -> Result<KeyView<'m>, StageError> {
    let kind = registry
        .get(&node.kind)
        .ok_or_else(|| StageError::Failed(format!("unknown kind `{}`", node.kind)))?;
    Ok(KeyView {
        kind: &node.kind,
        version: kind.version(),
        params: &node.params,
        seed: node.seed,
        inputs: inputs.into_iter().collect(),
        external: kind.external_digest(&node.params)?,
    })
}

/// `spo.k=3,spo.j=2`: the sweep overrides of a node's lineage.
pub fn variant_string(node: &Node) -> String {
    node.variant
        .iter()
        .flat_map(|(s, ov)| ov.iter().map(move |(k, v)| format!("{s}.{k}={}", bare(v))))
        .collect::<Vec<_>>()
        .join(",")
}

pub(crate) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into())
}
