//! spo-diffusion: schedules, DDIM with exact log-probabilities, a diffusers-compatible UNet,
//! the SD VAE and LoRA, on candle.

pub mod ddim;
pub mod error;
pub mod schedule;

pub use ddim::{Ddim, DdimTransition, classifier_free_guidance};
pub use error::{DiffusionError, Result};
pub use schedule::{BetaSchedule, NoiseSchedule, PredictionType, SchedulerConfig, TimestepSpacing};
