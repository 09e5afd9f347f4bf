//! `status` and `why`: what state each cell is in, and which part of its key changed.

use std::fmt;

use crate::error::Error;
use crate::key::{CellKey, KeyView};
use crate::param::Value;
use crate::plan::{Node, Plan};
use crate::registry::Registry;
use crate::run::key_view;
use crate::store::{Pointer, Store};

/// The state of one cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Its current key is in the store.
    Cached,
    /// It ran before, but something in its key changed since.
    Stale,
    /// It never ran.
    Missing,
    /// Its current key is in the store, but its manifest cannot be read
    /// (`spo-pipe verify --repair` quarantines it).
    Damaged,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Cached => "cached",
            State::Stale => "stale",
            State::Missing => "missing",
            State::Damaged => "damaged",
        })
    }
}

/// One part of a key that differs from the last run of the same cell.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "what", rename_all = "lowercase")]
pub enum Change {
    /// The kind's code version was bumped.
    Version {
        old: u32,
        new: u32,
    },
    /// A param changed, appeared (old is none) or went away (new is none).
    Param {
        name: String,
        old: Option<Value>,
        new: Option<Value>,
    },
    Seed {
        old: Option<u64>,
        new: Option<u64>,
    },
    /// An input's content changed; `new` is none while the input has no current output.
    Input {
        stage: String,
        old: Option<String>,
        new: Option<String>,
    },
    /// Content outside the store that the kind hashes (a script, say) changed.
    External {
        old: Option<String>,
        new: Option<String>,
    },
    /// Nothing changed, but the last run's output (same key) is no longer in the store: deleted
    /// behind spo-pipe's back, or dropped by `gc` while another configuration was current.
    Removed {
        key: String,
    },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let opt = |v: &Option<Value>| v.as_ref().map_or("(unset)".to_owned(), Value::to_string);
        let short = |d: &Option<String>| {
            d.as_ref()
                .map_or("(none)".to_owned(), |d| d.chars().take(12).collect())
        };
        match self {
            Change::Version { old, new } => write!(f, "code version {old} -> {new}"),
            Change::Param { name, old, new } => {
                write!(f, "param {name}: {} -> {}", opt(old), opt(new))
            }
            Change::Seed { old, new } => write!(f, "seed {old:?} -> {new:?}"),
            Change::Input {
                stage,
                old,
                new: None,
            } => write!(
                f,
                "input `{stage}` (was {}) has no current output yet; it will run first (see `spo-pipe why {stage}`)",
                short(old)
            ),
            Change::Input { stage, old, new } => write!(
                f,
                "input `{stage}` content {} -> {}",
                short(old),
                short(new)
            ),
            Change::External { old, new } => {
                write!(f, "external content {} -> {}", short(old), short(new))
            }
            Change::Removed { key } => write!(
                f,
                "nothing changed, but its output {} is no longer in the store",
                short(&Some(key.clone()))
            ),
        }
    }
}

/// The status of one node of a plan (its label borrowed from the plan: `status` of a
/// 200k-cell sweep holds one per cell).
#[derive(Debug, Clone, serde::Serialize)]
pub struct CellStatus<'p> {
    pub node: usize,
    pub label: &'p str,
    pub seed: Option<u64>,
    pub state: State,
    /// The current key, where the inputs are all current.
    pub key: Option<String>,
    /// For a stale cell: what changed since its last run.
    pub changes: Vec<Change>,
}

/// What the store says about one node of a plan.
pub(crate) struct Resolution {
    /// Its current key, when its inputs are all in the store.
    pub key: Option<String>,
    /// The stage and content digest of its committed cell (what keys its readers).
    pub output: Option<(String, String)>,
    /// Its key is committed but the manifest cannot be read.
    pub damaged: bool,
}

impl Resolution {
    /// A node whose inputs are not all in the store: no key.
    const NONE: Resolution = Resolution {
        key: None,
        output: None,
        damaged: false,
    };
}

/// The current key of every node whose inputs are all in the store. A manifest that cannot be
/// read is reported (naming it) and counts as damaged, not as an error.
///
/// Nodes are resolved a wave at a time (a wave: the nodes whose inputs all lie in earlier
/// waves), each wave split over the machine's cores: a node needs only its inputs' outputs, and
/// most of the time goes to a `stat` per node.
pub(crate) fn resolve(
    registry: &Registry,
    store: &Store,
    plan: &Plan,
) -> Result<Vec<Resolution>, Error> {
    let n = plan.nodes.len();
    let mut out: Vec<Resolution> = (0..n).map(|_| Resolution::NONE).collect();
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    for wave in waves(plan) {
        let chunk = wave.len().div_ceil(threads).max(PER_THREAD);
        let done = &out;
        let parts: Vec<Result<Vec<Resolution>, Error>> = if wave.len() <= chunk {
            vec![resolve_some(registry, store, plan, &wave, done)]
        } else {
            std::thread::scope(|s| {
                let handles: Vec<_> = wave
                    .chunks(chunk)
                    .map(|ids| s.spawn(move || resolve_some(registry, store, plan, ids, done)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                    .collect()
            })
        };
        let mut ids = wave.iter();
        for part in parts {
            for (r, &id) in part?.into_iter().zip(&mut ids) {
                out[id] = r;
            }
        }
    }
    Ok(out)
}

/// Fewest nodes worth a thread of their own.
const PER_THREAD: usize = 1024;

/// The plan's node ids by wave: a node's wave is one past the latest of its inputs'. Nodes
/// come in topological order, so one pass finds every node's wave.
fn waves(plan: &Plan) -> Vec<Vec<usize>> {
    let mut wave_of = vec![0usize; plan.nodes.len()];
    let mut waves: Vec<Vec<usize>> = Vec::new();
    for (id, node) in plan.nodes.iter().enumerate() {
        let w = node
            .inputs
            .iter()
            .map(|&i| wave_of[i] + 1)
            .max()
            .unwrap_or(0);
        wave_of[id] = w;
        if waves.len() <= w {
            waves.resize_with(w + 1, Vec::new);
        }
        waves[w].push(id);
    }
    waves
}

/// The resolutions of nodes `ids`, whose inputs are all resolved in `done`.
fn resolve_some(
    registry: &Registry,
    store: &Store,
    plan: &Plan,
    ids: &[usize],
    done: &[Resolution],
) -> Result<Vec<Resolution>, Error> {
    let mut out = Vec::with_capacity(ids.len());
    for &id in ids {
        let node = &plan.nodes[id];
        let entry = match current_view(registry, store, node, done)? {
            Some(view) => {
                let key = view.key();
                match store.committed_cell(&key) {
                    Ok(cell) => Resolution {
                        output: cell.map(|c| (c.stage, c.digest)),
                        key: Some(key),
                        damaged: false,
                    },
                    Err(e) => {
                        tracing::warn!(
                            "{}: {e}; `spo-pipe verify --repair` quarantines it",
                            node.display()
                        );
                        Resolution {
                            key: Some(key),
                            output: None,
                            damaged: true,
                        }
                    }
                }
            }
            None => Resolution::NONE,
        };
        out.push(entry);
    }
    Ok(out)
}

/// The key parts of `node` if its inputs (resolved in `resolved`) are all in the store.
fn current_parts(
    registry: &Registry,
    store: &Store,
    node: &Node,
    resolved: &[Resolution],
) -> Result<Option<CellKey>, Error> {
    Ok(current_view(registry, store, node, resolved)?.map(|v| v.to_owned()))
}

/// [`current_parts`], borrowed.
fn current_view<'a>(
    registry: &Registry,
    store: &Store,
    node: &'a Node,
    resolved: &'a [Resolution],
) -> Result<Option<KeyView<'a>>, Error> {
    let inputs: Option<Vec<(&str, &str)>> = node
        .inputs
        .iter()
        .map(|&i| {
            resolved[i]
                .output
                .as_ref()
                .map(|(s, d)| (s.as_str(), d.as_str()))
        })
        .collect();
    inputs
        .map(|ins| key_view(registry, node, ins).map_err(|e| Error::corrupt(store.root(), e)))
        .transpose()
}

/// The status of every node in `plan`.
pub fn status<'p>(
    registry: &Registry,
    store: &Store,
    plan: &'p Plan,
) -> Result<Vec<CellStatus<'p>>, Error> {
    let mut resolved = resolve(registry, store, plan)?;
    let mut out = Vec::with_capacity(plan.nodes.len());
    for (i, node) in plan.nodes.iter().enumerate() {
        let Resolution {
            key,
            output,
            damaged,
        } = &resolved[i];
        let pointer = if output.is_some() || *damaged {
            None
        } else {
            store.pointer(&node.label, node.seed).unwrap_or_else(|e| {
                tracing::warn!("{e}; `spo-pipe verify --repair` quarantines it");
                None
            })
        };
        let (state, changes) = match (output, &pointer) {
            _ if *damaged => (State::Damaged, vec![]),
            (Some(_), _) => (State::Cached, vec![]),
            (None, Some(p)) => {
                let mut changes = diff(
                    &p.parts,
                    current_parts(registry, store, node, &resolved)?.as_ref(),
                    node.inputs
                        .iter()
                        .filter(|&&j| resolved[j].output.is_none())
                        .map(|&j| &*plan.nodes[j].stage_name),
                );
                if changes.is_empty() && key.as_deref() == Some(p.key.as_str()) {
                    changes.push(Change::Removed { key: p.key.clone() });
                }
                (State::Stale, changes)
            }
            (None, None) => (State::Missing, vec![]),
        };
        out.push(CellStatus {
            node: i,
            label: &node.label,
            seed: node.seed,
            state,
            // Moved, not copied: only this node's entry holds its key, and no later node's
            // key parts read it.
            key: resolved[i].key.take(),
            changes,
        });
    }
    Ok(out)
}

/// The explanation `why` gives for one node.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Why {
    pub label: String,
    pub seed: Option<u64>,
    pub state: State,
    pub key: Option<String>,
    pub last_key: Option<String>,
    pub changes: Vec<Change>,
}

/// Why node `id` is (not) cached: the structured diff of its key against its last run.
pub fn why(registry: &Registry, store: &Store, plan: &Plan, id: usize) -> Result<Why, Error> {
    let st = status(registry, store, plan)?;
    let node = &plan.nodes[id];
    let pointer: Option<Pointer> = store.pointer(&node.label, node.seed)?;
    let s = &st[id];
    Ok(Why {
        label: node.label.clone(),
        seed: node.seed,
        state: s.state,
        key: s.key.clone(),
        last_key: pointer.map(|p| p.key),
        changes: s.changes.clone(),
    })
}

/// What differs between the key parts of a cell's last run and its current ones (`None` when an
/// input has no current output yet: then `pending` names those inputs).
pub fn diff<'a>(
    old: &CellKey,
    new: Option<&CellKey>,
    pending: impl Iterator<Item = &'a str>,
) -> Vec<Change> {
    let mut changes = Vec::new();
    let Some(new) = new else {
        // Only the inputs can be unresolved; name those whose cells are not current.
        for stage in pending {
            let old_digest = old
                .inputs
                .iter()
                .find(|(s, _)| s == stage)
                .map(|(_, d)| d.clone());
            changes.push(Change::Input {
                stage: stage.to_owned(),
                old: old_digest,
                new: None,
            });
        }
        return changes;
    };
    if old.version != new.version {
        changes.push(Change::Version {
            old: old.version,
            new: new.version,
        });
    }
    for (name, v) in &new.params.0 {
        match old.params.0.get(name) {
            Some(o) if o == v => {}
            o => changes.push(Change::Param {
                name: name.clone(),
                old: o.cloned(),
                new: Some(v.clone()),
            }),
        }
    }
    for (name, o) in &old.params.0 {
        if !new.params.0.contains_key(name) {
            changes.push(Change::Param {
                name: name.clone(),
                old: Some(o.clone()),
                new: None,
            });
        }
    }
    if old.seed != new.seed {
        changes.push(Change::Seed {
            old: old.seed,
            new: new.seed,
        });
    }
    for (stage, d) in &new.inputs {
        let o = old
            .inputs
            .iter()
            .find(|(s, _)| s == stage)
            .map(|(_, d)| d.clone());
        if o.as_ref() != Some(d) {
            changes.push(Change::Input {
                stage: stage.clone(),
                old: o,
                new: Some(d.clone()),
            });
        }
    }
    if old.external != new.external {
        changes.push(Change::External {
            old: old.external.clone(),
            new: new.external.clone(),
        });
    }
    changes
}
