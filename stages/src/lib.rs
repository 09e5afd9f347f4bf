//! spo-stages: the stage kinds of spo-pipe, bridging the orchestrator and the models.

pub mod aesthetic;
pub mod base;
pub mod calibrate;
pub mod checkpoint;
pub mod clip_train;
pub mod command;
pub mod curve;
pub mod d3po;
pub mod ddpo;
pub mod device;
pub mod diffusion_dpo;
pub mod download;
pub mod embedded;
pub mod error;
pub mod gradspo;
pub mod hub;
pub mod inworld;
mod online;
pub mod oracle_judge;
pub mod pickapic;
mod pool_check;
mod process_group;
pub mod prompts;
pub mod real;
pub mod sample;
pub mod sample_pairs;
pub mod score;
pub mod sd_sample;
pub mod sd_score;
pub mod sd_spo;
pub mod spm;
pub mod spo;
pub mod tensors;
pub mod training;
pub mod vocab;
pub mod winrate;
pub mod world;
mod world_parquet;
pub mod worlddata;

use spo_core::StageKind;

/// Process-wide settings the model stages want, for a binary to call once at start-up: glibc
/// keeps freed buffers instead of returning them to the OS (candle allocates a fresh buffer per
/// op; without this, page faults took 40% of a training step here).
pub fn init_runtime() {
    if !spo_nn::allocator::retain_freed_memory() {
        tracing::debug!("the C allocator did not take the buffer-retention settings");
    }
}

/// Every built-in stage kind, for the binary's registry.
pub fn kinds() -> Vec<Box<dyn StageKind>> {
    vec![
        Box::new(download::Download),
        Box::new(hub::Hub),
        Box::new(command::Shell),
        Box::new(clip_train::ClipPretrain),
        Box::new(clip_train::PickScoreTrain),
        Box::new(aesthetic::AestheticTrain),
        Box::new(score::Score),
        Box::new(base::BasePretrain),
        Box::new(sample::Sample),
        Box::new(sd_sample::SdSample),
        Box::new(sd_score::SdScore),
        Box::new(sd_spo::SdSpo),
        Box::new(sd_spo::SdxlSpo),
        Box::new(sd_spo::SdGradSpo),
        Box::new(sample_pairs::SamplePairs),
        Box::new(spm::TrainSpm),
        Box::new(spo::SpoTrain),
        Box::new(gradspo::GradSpoTrain),
        Box::new(diffusion_dpo::DiffusionDpo),
        Box::new(diffusion_dpo::MapoTrain),
        Box::new(d3po::D3po),
        Box::new(ddpo::Ddpo),
        Box::new(calibrate::Calibrate),
        Box::new(winrate::WinRate),
        Box::new(curve::Curve),
        Box::new(world::WorldKind),
        Box::new(pickapic::PickAPic),
        Box::new(prompts::Prompts),
    ]
}
