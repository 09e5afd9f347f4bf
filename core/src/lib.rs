//! spo-core: the orchestrator behind spo-pipe.
//!
//! It reads a pipeline (stages with typed params, sweeps, seeds, targets, tables), expands it
//! into a DAG of cells, keys every cell by content, and runs what is not in the store, each
//! cell committed atomically under its key. It knows nothing of diffusion: stage kinds plug in
//! through [`StageKind`].

pub mod manifest;
pub mod param;
pub mod stage;

mod error;

pub use error::Error;
pub use manifest::{FileEntry, FileInfo, InputRef, Manifest};
pub use param::{ParamSpec, ParamType, Params, Value};
pub use stage::{ArtifactWriter, Input, StageContext, StageError, StageKind};
