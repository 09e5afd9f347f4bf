//! spo-stages: the stage kinds of spo-pipe, bridging the orchestrator and the models.

pub mod aesthetic;
pub mod clip_train;
pub mod command;
pub mod download;
pub mod inworld;
pub mod pickapic;
pub mod prompts;
pub mod score;
pub mod tensors;
pub mod training;
pub mod vocab;
pub mod world;
pub mod worlddata;
mod world_parquet;

use spo_core::StageKind;

/// Every built-in stage kind, for the binary's registry.
pub fn kinds() -> Vec<Box<dyn StageKind>> {
    vec![
        Box::new(download::Download),
        Box::new(command::Shell),
        Box::new(clip_train::ClipPretrain),
        Box::new(clip_train::PickScoreTrain),
        Box::new(aesthetic::AestheticTrain),
        Box::new(score::Score),
        Box::new(world::WorldKind),
        Box::new(pickapic::PickAPic),
        Box::new(prompts::Prompts),
    ]
}
