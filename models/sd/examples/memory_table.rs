//! Prints `spo_sd::memory`'s estimate for SD-1.5 and SDXL at their real dimensions, the
//! table in docs/real-weights.md: the UNet's and VAE's parameters counted by building them
//! over a backend that hands out zero-stride tensors (nothing is allocated), the text encoders'
//! from the CLIP text transformer's shape.
//!
//!     cargo run --release -p spo-sd --example memory_table

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use spo_diffusion::{
    AutoencoderKL, AutoencoderKLConfig, UNet2DConditionConfig, UNet2DConditionModel,
};
use spo_sd::Workload;
use spo_sd::memory::{PipelineShape, human_bytes};

/// Counts the elements of every tensor a model asks for, handing out broadcast zeros.
struct Counter(Arc<Mutex<u64>>);

impl SimpleBackend for Counter {
    fn get(&self, s: Shape, _: &str, _: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        *self
            .0
            .lock()
            .map_err(|_| candle_core::Error::Msg("poisoned".into()))? += s.elem_count() as u64;
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }
    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> Result<Tensor> {
        candle_core::bail!("`{name}` asked for without a shape")
    }
    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// Parameters of whatever `build` builds from a var builder.
fn count<E: std::fmt::Display>(
    build: impl FnOnce(VarBuilder) -> std::result::Result<(), E>,
) -> Result<u64> {
    let total = Arc::new(Mutex::new(0));
    let vb = VarBuilder::from_backend(Box::new(Counter(total.clone())), DType::F16, Device::Cpu);
    build(vb).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let n = *total
        .lock()
        .map_err(|_| candle_core::Error::Msg("poisoned".into()))?;
    Ok(n)
}

/// A CLIP text transformer's parameters: token and position embeddings, per layer four
/// d×d projections with biases, a 4d MLP and two layer norms, the final norm, and an optional
/// d × `projection` text projection (SDXL's second encoder).
fn clip_text_parameters(width: u64, layers: u64, projection: u64) -> u64 {
    let (vocab, positions) = (49_408, 77);
    (vocab + positions) * width
        + layers * (12 * width * width + 13 * width)
        + 2 * width
        + width * projection
}

fn sdxl_unet() -> std::result::Result<UNet2DConditionConfig, serde_json::Error> {
    // stabilityai/stable-diffusion-xl-base-1.0 unet/config.json, the fields that differ
    serde_json::from_str(
        r#"{"sample_size": 128, "block_out_channels": [320, 640, 1280],
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            "transformer_layers_per_block": [1, 2, 10], "attention_head_dim": [5, 10, 20],
            "cross_attention_dim": 2048, "use_linear_projection": true,
            "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
            "projection_class_embeddings_input_dim": 2816}"#,
    )
}

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let vae = AutoencoderKLConfig::sd15();
    let vae_parameters = count(|vb| AutoencoderKL::new(&vae, vb).map(drop))?;
    let unet_parameters =
        |cfg: &UNet2DConditionConfig| count(|vb| UNet2DConditionModel::new(cfg, vb).map(drop));
    let sd15 = PipelineShape {
        unet: UNet2DConditionConfig::sd15(),
        vae: vae.clone(),
        unet_parameters: unet_parameters(&UNet2DConditionConfig::sd15())?,
        vae_parameters,
        text_parameters: clip_text_parameters(768, 12, 0),
    };
    let xl = sdxl_unet()?;
    let sdxl = PipelineShape {
        unet_parameters: unet_parameters(&xl)?,
        unet: xl,
        // SDXL's runs use the fp16-fix VAE, whose config allows f16
        vae: AutoencoderKLConfig {
            force_upcast: false,
            ..vae
        },
        vae_parameters,
        text_parameters: clip_text_parameters(768, 12, 0) + clip_text_parameters(1280, 32, 1280),
    };
    println!(
        "| pipeline | parameters (UNet / VAE / text) | precision | workload | weights | training state | activations | total |"
    );
    println!("|---|---|---|---|---:|---:|---:|---:|");
    let m = |n: u64| format!("{:.0}M", n as f64 / 1e6);
    for (name, shape, rank) in [("SD-1.5", &sd15, 4), ("SDXL", &sdxl, 64)] {
        // a micro-batch of p pairs is 2p latents (both sides' x_t) in one training step
        let train = |pairs: usize, rollouts: usize, checkpointing: bool| Workload::Train {
            batch: 2 * pairs,
            rollout_batch: rollouts,
            rank,
            checkpointing,
            guided: true,
        };
        // Diffusion-DPO's and MaPO's step: both images of each pair, unguided
        let offline = |pairs: usize, checkpointing: bool| Workload::Train {
            batch: 2 * pairs,
            rollout_batch: 8,
            rank,
            checkpointing,
            guided: false,
        };
        let works = [
            ("sample, batch 4", Workload::Sample { batch: 4 }),
            ("sample, batch 1", Workload::Sample { batch: 1 }),
            ("SPO, 10 pairs, rollouts 10", train(10, 10, false)),
            ("SPO, 1 pair, rollouts 8", train(1, 8, false)),
            (
                "SPO, 10 pairs, rollouts 8, checkpointed",
                train(10, 8, true),
            ),
            ("SPO, 2 pairs, rollouts 8, checkpointed", train(2, 8, true)),
            ("SPO, 1 pair, rollouts 8, checkpointed", train(1, 8, true)),
            // the Table 2 methods at their kinds' default batches, micro-batches of 8 latents
            (
                "D3PO, 16 transition pairs, checkpointed",
                train(16, 8, true),
            ),
            ("D3PO, 4 transition pairs, checkpointed", train(4, 8, true)),
            (
                "DDPO, 16 transitions, checkpointed",
                Workload::Train {
                    batch: 16,
                    rollout_batch: 8,
                    rank,
                    checkpointing: true,
                    guided: true,
                },
            ),
            (
                "Diffusion-DPO / MaPO, 8 pairs, graph kept",
                offline(8, false),
            ),
            (
                "Diffusion-DPO / MaPO, 8 pairs, checkpointed",
                offline(8, true),
            ),
        ];
        for (what, work) in works {
            for dtype in [DType::F16, DType::F32] {
                let need = shape.estimate(dtype, work)?;
                println!(
                    "| {name} | {} / {} / {} | {dtype:?} | {what} | {} | {} | {} | **{}** |",
                    m(shape.unet_parameters),
                    m(shape.vae_parameters),
                    m(shape.text_parameters),
                    human_bytes(need.weights),
                    human_bytes(need.training_state),
                    human_bytes(need.activations),
                    human_bytes(need.total())
                );
            }
        }
    }
    Ok(())
}
