//! The Stable Diffusion VAE (`AutoencoderKL`) in diffusers' module layout.

pub mod config;
pub mod model;

pub use config::AutoencoderKLConfig;
pub use model::{AutoencoderKL, LatentDistribution};
