//! spo-diffusion: schedules, DDIM with exact log-probabilities, a diffusers-compatible UNet,
//! the SD VAE and LoRA, on candle.

pub mod attention;
pub mod ddim;
pub mod error;
pub mod folder;
pub mod guidance;
pub mod lora;
pub mod resnet;
pub mod schedule;
pub mod unet;
pub mod vae;
pub mod weights;

pub use ddim::{Ddim, DdimTransition, classifier_free_guidance};
pub use error::{DiffusionError, Result};
pub use folder::DiffusersFolder;
pub use guidance::{GuidanceInputs, guided_prediction};
pub use lora::{LoraConfig, LoraSwitch};
pub use schedule::{BetaSchedule, NoiseSchedule, PredictionType, SchedulerConfig, TimestepSpacing};
pub use unet::{AddedConditioning, UNet2DConditionConfig, UNet2DConditionModel};
pub use vae::{AutoencoderKL, AutoencoderKLConfig, LatentDistribution};
