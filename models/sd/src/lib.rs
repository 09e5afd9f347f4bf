//! spo-sd: Stable Diffusion pipelines read from diffusers folders (as `save_pretrained` writes
//! them and the Hugging Face hub serves them), composed of spo-clip's text encoder and
//! tokenizer and spo-diffusion's UNet, VAE and DDIM. Nothing here knows of the store: stages
//! hand it a folder and take images back.
//!
//! - [`StableDiffusion15`]: an SD-1.5-shaped folder, checked before any weight is read;
//!   [`StableDiffusion15::conditioning`], [`StableDiffusion15::denoise`] (DDIM with
//!   classifier-free guidance in latent space) and [`StableDiffusion15::decode`].
//! - [`TextEncoder`]: a `CLIPTextModel` folder with its tokenizer folder.
//! - [`SdPolicy`] and [`SpmJudge`]: latent SPO — the guided LoRA policy and the released
//!   step-aware preference model on VAE-decoded x̂₀, behind spo-methods' traits, so SPO's round
//!   (`spo_methods::spo::rollout`, `train_round`) runs on real weights unchanged.
//!
//! Parity with diffusers on a tiny random-weight pipeline: `tests/parity.rs`
//! (`tests/fixtures/sd/make_sd15_tiny.py` writes the folder and the goldens).

pub mod error;
pub mod sd15;
pub mod spo;
pub mod text;

pub use error::{Result, SdError};
pub use sd15::{Conditioning, SampleSettings, StableDiffusion15};
pub use spo::{SdPolicy, SpmJudge};
pub use text::TextEncoder;
