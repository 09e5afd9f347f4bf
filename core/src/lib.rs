//! spo-core: the orchestrator behind spo-pipe.
//!
//! It reads a pipeline (stages with typed params, sweeps, seeds, targets, tables), expands it
//! into a DAG of cells, keys every cell by content, and runs what is not in the store, each
//! cell committed atomically under its key. It knows nothing of diffusion: stage kinds plug in
//! through [`StageKind`].

pub mod cell_lock;
pub mod config;
pub mod config_error;
pub mod cores;
pub mod dag;
pub mod diff;
pub mod executor;
pub mod explain;
pub mod gc;
pub mod index;
pub mod key;
pub mod lease;
pub mod live;
pub mod manifest;
pub mod namemap;
pub mod param;
pub mod plan;
pub mod record;
pub mod registry;
pub mod remote;
pub mod run;
pub mod stage;
pub mod stats;
pub mod store;
pub mod tables;
pub mod typed_params;
pub mod verify;

mod cache;
mod committed;
mod error;
mod fileinfo;
mod memo;

pub use config::{Pipeline, Rows, StageDef, SweepDef, TableDef};
pub use config_error::ConfigError;
pub use error::Error;
pub use key::CellKey;
pub use manifest::{FileEntry, FileInfo, InputRef, Manifest};
pub use param::{ParamSpec, ParamType, Params, Value};
pub use plan::{Node, Plan, PlanError};
pub use registry::Registry;
pub use run::{Event, RunOptions, RunSummary};
pub use stage::{ArtifactWriter, Input, StageContext, StageError, StageKind};
pub use store::{Committed, Lookup, Store};
pub use typed_params::{Choice, FromParam};

#[doc(hidden)]
pub use serde as __serde;
