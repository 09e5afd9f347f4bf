//! What a run records about the cells its plan resolves: each cell's run-index row and, for a
//! cell that found its key already committed (by another cell with identical inputs, another
//! process, a remote cache or a Slurm job), that row and its slot pointer once. Shared by the
//! local executor and the Slurm driver.

use std::sync::Mutex;

use crate::error::Error;
use crate::index::{self, IndexRow, RowIds};
use crate::key::CellKey;
use crate::manifest::Manifest;
use crate::plan::Plan;
use crate::run::{unix_now, variant_string};
use crate::stage::StageError;
use crate::store::{Committed, Pointer, Store};

/// Records rows and pointers for one run of `plan` over `store`.
pub struct Recorder<'a> {
    store: &'a Store,
    plan: &'a Plan,
    /// The ids of the index's rows, read at the first reuse.
    recorded: Mutex<Option<RowIds>>,
}

impl<'a> Recorder<'a> {
    pub fn new(store: &'a Store, plan: &'a Plan) -> Self {
        Self {
            store,
            plan,
            recorded: Mutex::new(None),
        }
    }

    /// Node `id` found `c` committed: writes its slot pointer (with the key parts `parts`
    /// makes) and its index row, where the index lacks that row.
    pub fn reused(
        &self,
        id: usize,
        c: &Committed,
        parts: impl FnOnce() -> Result<CellKey, StageError>,
    ) -> Result<(), StageError> {
        if self.needs_row(id, c)? {
            self.write_reuse(id, &parts()?, c)?;
        }
        Ok(())
    }

    /// Whether the index lacks the row of node `id` reusing `c`; from now on it counts as
    /// recorded.
    fn needs_row(&self, id: usize, c: &Committed) -> Result<bool, Error> {
        let node = &self.plan.nodes[id];
        let mut g = self.recorded.lock().unwrap_or_else(|p| p.into_inner());
        let ids = match &mut *g {
            Some(ids) => ids,
            None => g.insert(index::row_ids(&self.store.index_dir())?),
        };
        Ok(ids.insert(&c.key, &node.cell, node.seed))
    }

    /// Writes the slot pointer and index row of node `id` reusing `c`.
    fn write_reuse(&self, id: usize, parts: &CellKey, c: &Committed) -> Result<(), Error> {
        let node = &self.plan.nodes[id];
        let m = &c.manifest(self.store)?;
        self.store.write_pointer(
            &node.label,
            node.seed,
            &Pointer {
                key: m.key.clone(),
                label: node.label.clone(),
                parts: parts.clone(),
                committed: unix_now(),
            },
        )?;
        index::append(&self.store.index_dir(), &self.row(id, m))
    }

    /// The index row of node `id` whose cell has manifest `m`.
    pub fn row(&self, id: usize, m: &Manifest) -> IndexRow {
        let node = &self.plan.nodes[id];
        let lineage: serde_json::Map<String, serde_json::Value> = self
            .plan
            .lineage(id)
            .into_iter()
            .map(|i| {
                (
                    self.plan.nodes[i].stage_name.to_string(),
                    serde_json::to_value(&*self.plan.nodes[i].params).unwrap_or_default(),
                )
            })
            .collect();
        IndexRow {
            key: m.key.clone(),
            stage: node.stage_name.to_string(),
            kind: m.kind.clone(),
            version: m.version,
            cell: node.cell.clone(),
            label: node.label.clone(),
            seed: node.seed,
            variant: variant_string(node),
            lineage: serde_json::Value::Object(lineage).to_string(),
            metrics: m.metrics.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            started: m.started,
            seconds: m.seconds,
            host: m.host.clone(),
            tool_version: m.tool_version.clone(),
        }
    }
}
