//! spo-clip: CLIP towers, the step-aware preference model (SPM) and the image scorers.

pub mod blip_vit;
pub mod clean;
pub mod config;
pub mod error;
pub mod image_reward;
pub mod layers;
pub mod med_bert;
pub mod model;
pub mod preprocess;
pub mod scorers;
pub mod spm;
pub mod text;
pub mod tokenizer;
pub mod vision;
pub mod weights;

pub use config::{ClipConfig, ClipTextConfig, ClipVisionConfig};
pub use error::ClipError;
pub use model::{ClipModel, l2_normalize, load_hf_clip, load_hf_clip_trainable, load_open_clip};
pub use scorers::{Metric, ScoreOptions, Scorer};
pub use spm::{Spm, SpmVariant, init_spm_from_pickscore, load_spm};
pub use tokenizer::{ClipTokenizer, TextCleaning};
