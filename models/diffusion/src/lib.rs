//! spo-diffusion: schedules, DDIM with exact log-probabilities, a diffusers-compatible UNet,
//! the SD VAE and LoRA, on candle. See `docs/diffusion.md` for conventions and tolerances.
//!
//! ```
//! use candle_core::{DType, Device};
//! use candle_nn::VarMap;
//! use spo_diffusion::{Ddim, GuidanceInputs, LoraConfig, NoiseSchedule, SchedulerConfig,
//!     UNet2DConditionConfig, UNet2DConditionModel, guided_prediction};
//! use spo_nn::{SeededRng, seeded_var_builder};
//!
//! let dev = Device::Cpu;
//! let (base, lora) = (VarMap::new(), VarMap::new());
//! let mut unet = UNet2DConditionModel::new(&UNet2DConditionConfig::tiny(),
//!     seeded_var_builder(&base, 0, DType::F32, &dev))?;
//! unet.add_lora(&LoraConfig::spo(4), &seeded_var_builder(&lora, 1, DType::F32, &dev))?;
//! let ddim = Ddim::new(NoiseSchedule::new(SchedulerConfig::sd15())?, 20, 1.0)?;
//! let mut rng = SeededRng::new(42);
//! let cond = rng.normal((1, 3, 32), 0.0, 1.0, DType::F32, &dev)?;
//! let uncond = cond.zeros_like()?;
//! let g = GuidanceInputs { cond: &cond, uncond: &uncond, added_cond: None, added_uncond: None, scale: 5.0 };
//! let x = rng.normal((1, 4, 8, 8), 0.0, 1.0, DType::F32, &dev)?;
//! let t = [ddim.timesteps()[0]];
//! let eps = guided_prediction(&unet, &x, &t, &g)?;
//! let z = rng.normal((1, 4, 8, 8), 0.0, 1.0, DType::F32, &dev)?;
//! let (x_prev, transition) = ddim.step(&eps, &t, &x, Some(&z))?;
//! assert_eq!(transition.log_prob(&x_prev)?.dims(), &[1]);
//! # Ok::<(), spo_diffusion::DiffusionError>(())
//! ```

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
pub use folder::{Architecture, DiffusersFolder};
pub use guidance::{GuidanceInputs, guided_prediction, guided_prediction_with};
pub use lora::{LoraConfig, LoraSwitch};
pub use schedule::{BetaSchedule, NoiseSchedule, PredictionType, SchedulerConfig, TimestepSpacing};
pub use unet::{AddedConditioning, UNet2DConditionConfig, UNet2DConditionModel};
pub use vae::{AutoencoderKL, AutoencoderKLConfig, LatentDistribution};
