//! spo-stages: the stage kinds of spo-pipe, bridging the orchestrator and the models.

use spo_core::StageKind;

/// Every built-in stage kind, for the binary's registry.
pub fn kinds() -> Vec<Box<dyn StageKind>> {
    vec![]
}
