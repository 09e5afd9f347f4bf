//! spo-clip: CLIP towers, the step-aware preference model (SPM) and the image scorers.
//!
//! - [`ClipModel`]: CLIP text and vision towers in HF transformers naming, exact GELU or
//!   QuickGELU, any width/depth/patch size from a `config.json` ([`ClipConfig`]); loads HF
//!   folders ([`load_hf_clip`]) and OpenCLIP checkpoints ([`load_open_clip`], HPSv2), or trains
//!   from a `VarMap` (every weight, `logit_scale` and the class embedding included, gets a
//!   gradient: spo-nn's LayerNorm and a differentiable softmax).
//! - [`weights`]: released files (safetensors, PyTorch pickles), OpenCLIP → HF key mapping,
//!   and checked loading whose errors name the key and the expected shape.
//! - [`tokenizer`]: the CLIP BPE (embedded vocabulary) with HF or open_clip text cleaning;
//!   [`open_hf_tokenizer`] for a diffusers pipeline's tokenizer folder;
//!   [`image_reward::BertTokenizer`] for ImageReward.
//! - [`preprocess`]: Pillow-exact bicubic resizing, HF/torchvision centre crops, HPSv2's
//!   letterbox with or without antialiasing.
//! - [`scorers`]: PickScore, HPSv2, ImageReward, LAION aesthetic and CLIP score behind one
//!   [`Scorer`] (`score images + prompts → one score per image`).
//! - [`spm`]: the step-aware preference model and its ablations.
//!
//! Build a small CLIP from a config, then score an image with PickScore's formula:
//!
//! ```
//! use candle_core::{DType, Device};
//! use candle_nn::VarMap;
//! use spo_clip::{ClipConfig, ClipModel, Metric, ScoreOptions, Scorer};
//!
//! let dev = Device::Cpu;
//! let mut cfg = ClipConfig::vit_b_32();
//! (cfg.text_config.hidden_size, cfg.text_config.intermediate_size) = (32, 64);
//! (cfg.vision_config.hidden_size, cfg.vision_config.intermediate_size) = (32, 64);
//! cfg.text_config.num_hidden_layers = 1;
//! cfg.vision_config.num_hidden_layers = 1;
//! (cfg.text_config.num_attention_heads, cfg.vision_config.num_attention_heads) = (2, 2);
//! cfg.projection_dim = 16;
//! let varmap = VarMap::new();
//! let model = ClipModel::new(&cfg, spo_nn::seeded_var_builder(&varmap, 0, DType::F32, &dev))?;
//! let scorer = Scorer::from_clip(Metric::PickScore, model, &ScoreOptions::default(), &dev)?;
//! let image = image::RgbImage::from_pixel(300, 200, image::Rgb([200, 120, 40]));
//! let scores = scorer.score(&[image], &["an orange square"])?;
//! assert_eq!(scores.len(), 1);
//! assert!(scores[0].is_finite());
//! # Ok::<(), spo_clip::ClipError>(())
//! ```

pub mod blip_vit;
pub mod clean;
pub mod config;
pub mod error;
pub mod hf_tokenizer;
pub mod image_reward;
pub mod layers;
pub mod med_bert;
pub mod memory;
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
pub use hf_tokenizer::open_hf_tokenizer;
pub use model::{ClipModel, l2_normalize, load_hf_clip, load_hf_clip_trainable, load_open_clip};
pub use scorers::{Metric, ScoreOptions, Scorer};
pub use spm::{Spm, SpmVariant, init_spm_from_pickscore, load_spm};
pub use tokenizer::{ClipTokenizer, TextCleaning};
