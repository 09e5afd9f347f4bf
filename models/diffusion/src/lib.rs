//! spo-diffusion: schedules, DDIM with exact log-probabilities, a diffusers-compatible UNet, LoRA.
