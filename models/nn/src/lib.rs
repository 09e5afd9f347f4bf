//! spo-nn: differentiable building blocks on candle shared by spo-pipe's models.
//!
//! candle 0.11's CPU backend cannot be seeded, its fused LayerNorm and `softmax_last_dim` record
//! no backward, and its AdamW cannot save its state. This crate holds the replacements every
//! model crate uses:
//! - [`SeededRng`] and [`seeded_var_builder`]: reproducible tensors and initial weights;
//! - [`LayerNorm`], [`GroupNorm`], [`attention`], [`activation`], [`linear`], [`Conv2d`],
//!   [`upsample`]: layers whose gradients flow; on the CPU in f32 each is one fused kernel with
//!   its own backward ([`fast_path`] chooses, [`vmath`] and [`gemm`] are their building blocks);
//! - [`threads::install`]: a step on a pool of exactly the threads it was lent;
//! - [`AdamW`]: `torch.optim.AdamW` with exact save/load;
//! - [`checkpoint::Tape`]: gradient checkpointing, one segment's graph alive at a time;
//! - [`sharded_backward`]: a batch's gradients shard by shard on the free cores, bit-identical
//!   for any number of threads;
//! - [`vars_without_gradient`]: the test that every trainable variable learns.
//!
//! ```
//! use candle_core::{DType, Device, Module};
//! use candle_nn::VarMap;
//! use spo_nn::{AdamW, AdamWConfig, SeededRng, linear, named_vars, seeded_var_builder};
//!
//! let varmap = VarMap::new();
//! let vb = seeded_var_builder(&varmap, 0, DType::F32, &Device::Cpu);
//! let layer = linear::linear(4, 2, vb.pp("fc"))?;
//! let xs = SeededRng::new(1).normal((3, 4), 0.0, 1.0, DType::F32, &Device::Cpu)?;
//! let loss = layer.forward(&xs)?.sqr()?.mean_all()?;
//! let mut opt = AdamW::new(named_vars(&varmap)?, AdamWConfig::default())?;
//! opt.step(&loss.backward()?)?;
//! # Ok::<(), candle_core::Error>(())
//! ```

pub mod activation;
pub mod adamw;
pub mod allocator;
pub mod attention;
pub mod attention_fused;
pub mod checkpoint;
pub mod conv;
mod cpu_slice;
pub mod error;
pub mod fast_path;
pub mod geglu;
pub mod gemm;
pub mod grad_check;
pub mod group_norm;
pub mod group_norm_fused;
pub mod im2col;
mod kept;
pub mod layer_norm;
pub mod layer_norm_fused;
pub mod linear;
pub mod linear_fused;
pub mod linear_geglu;
pub mod rng;
pub mod seeded_init;
pub mod sharded;
pub mod softmax;
#[cfg(test)]
mod test_support;
pub mod threads;
pub mod upsample;
pub mod vmath;

pub use activation::Activation;
pub use adamw::{AdamW, AdamWConfig};
pub use conv::{Conv2d, Conv2dSpec};
pub use error::NnError;
pub use grad_check::vars_without_gradient;
pub use group_norm::GroupNorm;
pub use layer_norm::LayerNorm;
pub use rng::{RngState, SeededRng};
pub use seeded_init::{named_vars, seeded_var_builder};
pub use sharded::{add_gradients, clip_grad_norm, sharded_backward};
