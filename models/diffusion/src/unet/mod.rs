//! The conditional UNet of Stable Diffusion, in diffusers' module layout.

pub mod blocks;
pub mod config;
pub mod embeddings;
pub mod model;
pub mod transformer;

pub use config::{PerBlock, UNet2DConditionConfig};
pub use model::{AddedConditioning, UNet2DConditionModel};
