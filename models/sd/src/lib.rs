//! spo-sd: Stable Diffusion pipelines read from diffusers folders (as `save_pretrained` writes
//! them and the Hugging Face hub serves them), composed of spo-clip's text encoder and
//! tokenizer and spo-diffusion's UNet, VAE and DDIM. Nothing here knows of the store: stages
//! hand it a folder and take images back.
//!
//! - [`StableDiffusion`]: an SD-1.5- or SDXL-shaped folder, checked before any weight is read;
//!   [`StableDiffusion::conditioning`] (SDXL: both encoders' penultimate states, the pooled
//!   projection, size ids), [`StableDiffusion::denoise`] (DDIM with classifier-free guidance in
//!   latent space) and [`StableDiffusion::decode`].
//! - [`TextEncoder`]: a `CLIPTextModel` folder with its tokenizer folder.
//! - [`SdPolicy`] and [`SpmJudge`]: latent SPO — the guided LoRA policy and the released
//!   step-aware preference model on VAE-decoded x̂₀, behind spo-methods' traits, so SPO's round
//!   (`spo_methods::spo::rollout`, `train_round`) runs on real weights unchanged.
//!
//! Parity with diffusers on tiny random-weight pipelines of both shapes: `tests/parity.rs`
//! (`tests/fixtures/sd/make_sd15_tiny.py` and `make_sdxl_tiny.py` write the folders and the
//! goldens); one latent SPO step against a PyTorch re-implementation: `tests/spo_step.rs`; one
//! Diffusion-DPO step and MaPO's loss: `tests/dpo_step.rs`.

pub mod error;
pub mod memory;
pub mod pipeline;
pub mod spo;
pub mod text;

pub use error::{Result, SdError};
pub use memory::{MemoryNeed, Workload};
pub use pipeline::{Conditioning, SampleSettings, StableDiffusion};
pub use spo::{SdPolicy, SpmJudge};
pub use text::TextEncoder;
