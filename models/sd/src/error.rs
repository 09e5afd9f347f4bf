//! Errors of spo-sd: the component crates' errors, which name the file at fault.

/// A failure to open or run a pipeline.
#[derive(Debug, thiserror::Error)]
pub enum SdError {
    /// A UNet, VAE, scheduler or folder-layout failure.
    #[error(transparent)]
    Diffusion(#[from] spo_diffusion::DiffusionError),
    /// A text encoder or tokenizer failure.
    #[error(transparent)]
    Clip(#[from] spo_clip::ClipError),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A weights file the memory estimate reads cannot be read (the message names it).
    #[error("memory estimate: {0}")]
    Memory(String),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, SdError>;
