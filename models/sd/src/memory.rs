//! What a Stable Diffusion cell needs in device memory, computed from a diffusers folder's
//! configs and safetensors headers before any weight is read, so that a cell that cannot fit
//! is refused up front rather than dying mid-run.
//!
//! The weights are counted exactly (every tensor of the UNet, VAE and text encoders, at the dtype
//! they are loaded as). The activations are a model of the UNet as it runs here, op by op
//! outside the fused CPU kernels (the path CUDA and half precision take): a guided call holds
//! the batch twice; training keeps every op's output for backward, and attention keeps its
//! f32 scores, their scaled copy and softmax beside the probabilities in the weights' dtype
//! (`spo_nn::attention::scaled_dot_product_attention`); sampling holds one layer's working set
//! at a time. The VAE decodes one image at a time's worth of the batch at its finest level.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use candle_core::DType;
use spo_diffusion::weights::component_weight_files;
use spo_diffusion::{AutoencoderKLConfig, DiffusersFolder, UNet2DConditionConfig};
use spo_nn::attention::SCORES_BLOCK_BYTES;

use crate::error::{Result, SdError};
use crate::pipeline::vae_dtype;

/// Text tokens per prompt (CLIP's context).
const TOKENS: usize = 77;

/// Measured against the model below (`examples/memory_check.rs`: SD-1.5's widths in f16 on
/// the CPU's op-by-op path, latents 8×8 to 32×32, batches 1 and 2; docs/real-weights.md):
/// the non-attention maps a training step keeps are 7× the count below (every LoRA projection
/// casts its input to f32, group norms and SiLUs are composed of several kept ops), the
/// attention scores 1.13×, and a step keeps 2.9× the UNet's weight bytes besides (candle's
/// backward computes a gradient for every frozen weight it meets, and keeps it to the end).
const DENSE_CALIBRATION: f64 = 7.0;
const SCORES_CALIBRATION: f64 = 1.13;
const WEIGHT_GRADIENTS: f64 = 2.9;
/// The same check of a sampling call (its attention in blocks of query rows; 32×32 latents at
/// batch 2 and SD-1.5's 64×64 at batch 1): its peak is up to 1.9× one layer's working set below.
const PEAK_CALIBRATION: f64 = 1.9;

/// Bytes of device memory a cell needs, by what holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryNeed {
    /// The frozen weights: UNet, VAE, text encoders (and any model the cell adds).
    pub weights: u64,
    /// The trainable adapter with its gradient and AdamW's two moments (f32), and the
    /// gradients of the frozen weights that candle's backward computes and keeps.
    pub training_state: u64,
    /// The largest set of activations alive at once.
    pub activations: u64,
}

impl MemoryNeed {
    /// Everything together.
    pub fn total(&self) -> u64 {
        self.weights + self.training_state + self.activations
    }
}

/// What the cell does with the pipeline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Workload {
    /// Guided DDIM sampling of `batch` images, then decoding them.
    Sample { batch: usize },
    /// Training a LoRA of `rank` through UNet calls on `batch` latents per step (SPO's
    /// micro-batch of pairs: both sides' x_t; Diffusion-DPO's pairs: both images) with
    /// gradients kept (`checkpointing`: one layer's graph at a time, the calls `rollout_batch`
    /// latents each), between calls without gradients (rollouts, the frozen reference) and VAE
    /// passes (x̂₀ decoded for a judge, images encoded) `rollout_batch` latents at a time.
    /// `guided`: every UNet call runs classifier-free guidance (each latent twice).
    Train {
        batch: usize,
        rollout_batch: usize,
        rank: usize,
        checkpointing: bool,
        guided: bool,
    },
}

/// Elements of every tensor in a safetensors file, from its header.
fn safetensors_elements(path: &Path) -> Result<u64> {
    let bad = |why: String| SdError::Memory(format!("{}: {why}", path.display()));
    let mut f = File::open(path).map_err(|e| bad(e.to_string()))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| bad(e.to_string()))?;
    let n = u64::from_le_bytes(len);
    if n > 100 << 20 {
        return Err(bad(format!(
            "a header of {n} bytes is not a safetensors header"
        )));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(|e| bad(e.to_string()))?;
    let v: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| bad(format!("header: {e}")))?;
    let mut total = 0u64;
    for (name, t) in v.iter().filter(|(k, _)| k.as_str() != "__metadata__") {
        let shape = t
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| bad(format!("tensor `{name}` has no shape")))?;
        total += shape
            .iter()
            .map(|d| {
                d.as_u64()
                    .ok_or_else(|| bad(format!("tensor `{name}`: bad shape")))
            })
            .product::<Result<u64>>()?;
    }
    Ok(total)
}

/// Parameters of a component folder (`unet`, `vae`, `text_encoder`, …).
pub fn component_parameters(dir: &Path) -> Result<u64> {
    component_weight_files(dir)?
        .iter()
        .map(|f| safetensors_elements(f))
        .sum()
}

/// The UNet's LoRA parameters at `rank` on to_q/to_k/to_v/to_out.0 of every attention layer.
pub fn lora_parameters(unet: &UNet2DConditionConfig, rank: usize) -> Result<u64> {
    let mut total = 0u64;
    for level in levels(unet)? {
        let c = level.channels as u64;
        // self-attention: four c×c projections; cross-attention: q and out c×c, k and v from
        // the text states
        let per_layer = 4 * (c + c) + 2 * (c + c) + 2 * (unet.cross_attention_dim as u64 + c);
        total += level.attention_layers as u64 * per_layer * rank as u64;
    }
    Ok(total)
}

/// One resolution of the UNet as the estimate walks it.
struct Level {
    channels: usize,
    /// Latent positions at this resolution for one image of `h × w` latents, as a divisor.
    scale: usize,
    heads: usize,
    /// Transformer layers (`BasicTransformerBlock`s) run at this resolution, down, mid and up
    /// blocks together.
    attention_layers: usize,
    /// `Transformer2DModel`s holding them (each with a projection in and out).
    transformer_models: usize,
    /// ResNets run at this resolution, and the channels each takes in (skip concatenations).
    resnet_inputs: Vec<usize>,
}

fn levels(unet: &UNet2DConditionConfig) -> Result<Vec<Level>> {
    let n = unet.block_out_channels.len();
    let heads = unet.heads()?;
    let layers = unet.layers_per_block.resolve("layers_per_block", n)?;
    let transformers = unet
        .transformer_layers_per_block
        .resolve("transformer_layers_per_block", n)?;
    let ch = &unet.block_out_channels;
    let mut out: Vec<Level> = (0..n)
        .map(|i| Level {
            channels: ch[i],
            scale: 1 << i,
            heads: heads[i],
            attention_layers: 0,
            transformer_models: 0,
            resnet_inputs: Vec::new(),
        })
        .collect();
    for (i, ty) in unet.down_block_types.iter().enumerate() {
        for r in 0..layers[i] {
            let input = if r == 0 && i > 0 { ch[i - 1] } else { ch[i] };
            out[i].resnet_inputs.push(input);
        }
        if ty.contains("CrossAttn") {
            out[i].attention_layers += layers[i] * transformers[i];
            out[i].transformer_models += layers[i];
        }
    }
    // the mid block: two ResNets around one transformer at the coarsest resolution
    out[n - 1].resnet_inputs.extend([ch[n - 1], ch[n - 1]]);
    if unet.mid_block_type.as_deref() != Some("UNetMidBlock2D") {
        out[n - 1].attention_layers += transformers[n - 1];
        out[n - 1].transformer_models += 1;
    }
    // the up blocks, coarsest first, one more ResNet each, each taking a skip connection
    for (u, ty) in unet.up_block_types.iter().enumerate() {
        let i = n - 1 - u;
        for r in 0..=layers[i] {
            let skip = if r == layers[i] && i > 0 {
                ch[i - 1]
            } else {
                ch[i]
            };
            let prev = if r == 0 {
                ch[(i + 1).min(n - 1)]
            } else {
                ch[i]
            };
            out[i].resnet_inputs.push(prev + skip);
        }
        if ty.contains("CrossAttn") {
            out[i].attention_layers += (layers[i] + 1) * transformers[i];
            out[i].transformer_models += layers[i] + 1;
        }
    }
    Ok(out)
}

/// How a UNet call runs, as far as memory goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// No gradient: one layer's working set at a time (sampling, rollouts).
    NoGrad,
    /// A training forward keeping every op's output for backward (candle's graph).
    Graph,
    /// Gradient checkpointing (`spo_nn::checkpoint`): every layer's output kept, and one
    /// layer's graph at a time while the backward recomputes it.
    Checkpointed,
}

/// Activation bytes of the UNet on `batch` latents of `h × w` (guided: the batch is doubled),
/// elements of `dtype`, run as `pass` says.
pub fn unet_activations(
    unet: &UNet2DConditionConfig,
    hw: [usize; 2],
    batch: usize,
    dtype: DType,
    pass: Pass,
) -> Result<u64> {
    activations(unet, hw, 2 * batch, dtype, pass)
}

/// Activation bytes of UNet calls on `rows` rows (a guided call's rows are twice its
/// latents), run as `pass` says.
fn activations(
    unet: &UNet2DConditionConfig,
    hw: [usize; 2],
    rows: usize,
    dtype: DType,
    pass: Pass,
) -> Result<u64> {
    let parts = ActivationParts::of(unet, hw, rows, dtype)?;
    Ok(match pass {
        Pass::NoGrad => parts.peak,
        // backward's transient gradients: about the largest layer's working set again
        Pass::Graph => parts.graph + parts.peak,
        Pass::Checkpointed => parts.checkpointed(&parts),
    } as u64)
}

/// A UNet call's activations by what holds them, in bytes.
struct ActivationParts {
    /// Every kept op's output of a differentiable forward.
    graph: f64,
    /// One layer's working set when nothing is kept.
    peak: f64,
    /// The largest layer's kept outputs.
    layer: f64,
    /// Every layer's output (what a checkpointed forward keeps).
    boundaries: f64,
}

impl ActivationParts {
    /// A checkpointed step whose tape holds these boundaries and whose UNet calls are `call`'s
    /// size (a micro-batch): the layers' outputs and, at the turn between down and up blocks,
    /// about as many of their gradients; one layer's graph and its backward's working set.
    fn checkpointed(&self, call: &ActivationParts) -> f64 {
        2.0 * self.boundaries + call.layer + call.peak
    }

    /// The parts of calls on `rows` rows (a guided call's rows are twice its latents).
    fn of(
        unet: &UNet2DConditionConfig,
        [h, w]: [usize; 2],
        rows: usize,
        dtype: DType,
    ) -> Result<Self> {
        let b = rows as u64;
        let e = dtype.size_in_bytes() as u64;
        let (mut dense, mut scores_kept) = (0u64, 0u64);
        let (mut peak, mut layer_kept, mut boundaries) = (0u64, 0f64, 0u64);
        for level in levels(unet)? {
            let n = ((h / level.scale) * (w / level.scale)) as u64;
            let c = level.channels as u64;
            let heads = level.heads as u64;
            let map = c * n * b * e;
            // a ResNet: two norms, two SiLUs and two convs of c, the time embedding's sum, the
            // 1×1 shortcut and the sum: about 9 c-wide maps beside its c_in-wide input
            for &input in &level.resnet_inputs {
                let maps = (input as u64 + 9 * c) * n * b * e;
                dense += maps;
                peak = peak.max(maps);
                layer_kept = layer_kept.max(DENSE_CALIBRATION * maps as f64);
            }
            // a transformer layer: norms, projections, residuals (14 c-wide), the feed-forward's
            // GEGLU (8c in, 4c out twice, c out); attention: f32 scores, scaled scores and softmax,
            // probabilities in `dtype`, for self- (n × n) and cross-attention (n × 77)
            let layers = level.attention_layers as u64;
            let block_dense = (14 * c + 8 * c + 8 * c + c) * n * b * e;
            let block_scores = heads * n * (n + TOKENS as u64) * b * (3 * 4 + e);
            dense += layers * block_dense;
            scores_kept += layers * block_scores;
            if layers > 0 {
                layer_kept = layer_kept.max(
                    DENSE_CALIBRATION * block_dense as f64
                        + SCORES_CALIBRATION * block_scores as f64,
                );
            }
            // checkpointing keeps each layer's output: every ResNet and transformer layer, each
            // transformer's projections in and out, a sampler per level
            boundaries += (level.resnet_inputs.len() as u64
                + layers
                + 2 * level.transformer_models as u64
                + 1)
                * map;
            // one attention's working set at a time when nothing is kept: f32 scores and their
            // scaled copy and the probabilities, in blocks of query rows
            // (`spo_nn::attention::SCORES_BLOCK_BYTES` of f32 scores at a time)
            if level.attention_layers > 0 {
                let scores = (heads * n * n * b * 4).min(SCORES_BLOCK_BYTES as u64);
                peak = peak.max(scores * (8 + e) / 4 + 4 * c * n * b * e);
            }
        }
        Ok(Self {
            graph: DENSE_CALIBRATION * dense as f64 + SCORES_CALIBRATION * scores_kept as f64,
            peak: PEAK_CALIBRATION * peak as f64,
            layer: layer_kept,
            boundaries: boundaries as f64,
        })
    }
}

/// Parameters of the UNet's largest layer (a ResNet or a transformer layer): the most frozen
/// weights one checkpointed layer's backward computes gradients for.
pub fn largest_layer_parameters(unet: &UNet2DConditionConfig) -> Result<u64> {
    let temb = 4 * unet.block_out_channels.first().copied().unwrap_or(320) as u64;
    let text = unet.cross_attention_dim as u64;
    let mut largest = 0u64;
    for level in levels(unet)? {
        let c = level.channels as u64;
        for &input in &level.resnet_inputs {
            let input = input as u64;
            let shortcut = if input == c { 0 } else { input * c };
            largest = largest.max(9 * input * c + 9 * c * c + temb * c + shortcut);
        }
        if level.attention_layers > 0 {
            // self-attention 4c², cross-attention 2c² + 2·c·text, the GEGLU feed-forward 12c²
            largest = largest.max(18 * c * c + 2 * c * text);
        }
    }
    Ok(largest)
}

/// VAE decoding activations for `batch` latents of `h × w`: the finest level's maps (its
/// first channel width, at the image's size), about six alive at once, in `dtype`.
pub fn vae_activations(
    vae: &AutoencoderKLConfig,
    [h, w]: [usize; 2],
    batch: usize,
    dtype: DType,
) -> u64 {
    let scale = 1usize << vae.block_out_channels.len().saturating_sub(1);
    let finest = vae.block_out_channels.first().copied().unwrap_or(128) as u64;
    let pixels = (h * scale * w * scale) as u64;
    6 * finest * pixels * batch as u64 * dtype.size_in_bytes() as u64
}

/// A pipeline as the estimate sees it: its configs and each component's parameter count.
#[derive(Debug, Clone)]
pub struct PipelineShape {
    pub unet: UNet2DConditionConfig,
    pub vae: AutoencoderKLConfig,
    pub unet_parameters: u64,
    pub vae_parameters: u64,
    /// Both text encoders' together (SDXL has two).
    pub text_parameters: u64,
}

impl PipelineShape {
    /// Read from a diffusers folder: configs, and parameters counted in the safetensors
    /// headers (no weight is read).
    pub fn of_folder(folder: &DiffusersFolder) -> Result<Self> {
        let mut text_parameters = 0;
        for enc in ["text_encoder", "text_encoder_2"] {
            if folder.has_component(enc) {
                text_parameters += component_parameters(&folder.component_dir(enc))?;
            }
        }
        Ok(Self {
            unet: folder.unet_config()?,
            vae: folder.vae_config()?,
            unet_parameters: component_parameters(&folder.component_dir("unet"))?,
            vae_parameters: component_parameters(&folder.component_dir("vae"))?,
            text_parameters,
        })
    }

    /// What `work` needs, the weights as `dtype` (the VAE's as [`vae_dtype`] makes them).
    pub fn estimate(&self, dtype: DType, work: Workload) -> Result<MemoryNeed> {
        let vae_dtype = vae_dtype(&self.vae, dtype);
        let unet = &self.unet;
        let side = unet.sample_size.unwrap_or(64);
        let latent = [side, side];
        let e = dtype.size_in_bytes() as u64;
        let weights = (self.unet_parameters + self.text_parameters) * e
            + self.vae_parameters * vae_dtype.size_in_bytes() as u64;
        let (activations, training_state) = match work {
            Workload::Sample { batch } => (
                unet_activations(unet, latent, batch, dtype, Pass::NoGrad)?
                    .max(vae_activations(&self.vae, latent, batch, vae_dtype)),
                0,
            ),
            Workload::Train {
                batch,
                rollout_batch,
                rank,
                checkpointing,
                guided,
            } => {
                // UNet rows per latent: a guided call runs each latent twice
                let per = if guided { 2 } else { 1 };
                let (training, differentiated) = if checkpointing {
                    // the training call runs `rollout_batch` latents at a time
                    let call =
                        ActivationParts::of(unet, latent, per * batch.min(rollout_batch), dtype)?;
                    let step = ActivationParts::of(unet, latent, per * batch, dtype)?;
                    (
                        step.checkpointed(&call) as u64,
                        largest_layer_parameters(unet)?,
                    )
                } else {
                    let graph = activations(unet, latent, per * batch, dtype, Pass::Graph)?;
                    (graph, self.unet_parameters)
                };
                (
                    training
                        .max(activations(
                            unet,
                            latent,
                            per * rollout_batch,
                            dtype,
                            Pass::NoGrad,
                        )?)
                        .max(vae_activations(&self.vae, latent, rollout_batch, vae_dtype)),
                    // the adapter, its gradient and AdamW's two moments, in f32; the frozen
                    // weights' gradients candle's backward keeps (to the end of the pass, or
                    // of one layer's recomputation when checkpointed)
                    16 * lora_parameters(unet, rank)?
                        + (WEIGHT_GRADIENTS * (differentiated * e) as f64) as u64,
                )
            }
        };
        Ok(MemoryNeed {
            weights,
            training_state,
            activations,
        })
    }
}

/// `bytes` in the largest binary unit that keeps it at least 1 (`3.20 GiB`, `1.5 MiB`, `12 KiB`).
pub fn human_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        n if n >= 1 << 30 => format!("{:.2} GiB", b / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", b / (1u64 << 20) as f64),
        _ => format!("{:.0} KiB", (b / 1024.0).ceil()),
    }
}
