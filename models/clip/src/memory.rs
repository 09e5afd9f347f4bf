//! What a scorer needs in device memory, from its configs alone (nothing is loaded): its
//! parameters in f32, as they are loaded whatever the file stores (ImageReward's checkpoint is
//! f16), and the largest activations of one forward pass over a batch of images. `sd-score`
//! refuses a cell that does not fit before it reads a weight.

use crate::blip_vit::BlipVisionConfig;
use crate::config::ClipConfig;
use crate::med_bert::MedConfig;

const F32: u64 = 4;

/// The widths of ImageReward's and the LAION aesthetic predictor's MLP head after its input.
const HEAD: [u64; 5] = [1024, 128, 64, 16, 1];

/// What a scorer needs on its device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScorerMemory {
    /// Its parameters in f32.
    pub weights: u64,
    /// The largest activations alive at once while it scores one batch.
    pub activations: u64,
}

/// One pre-LayerNorm transformer stack (CLIP's towers, BLIP's ViT).
struct Stack {
    layers: u64,
    width: u64,
    mlp: u64,
    heads: u64,
    tokens: u64,
}

impl Stack {
    /// Its layers' parameters: attention (q, k, v and the output, with biases), the MLP (with
    /// biases) and two LayerNorms per layer.
    fn params(&self) -> u64 {
        let (w, m) = (self.width, self.mlp);
        self.layers * (4 * w * w + 4 * w + 2 * w * m + m + w + 4 * w)
    }

    /// The activations one layer keeps alive at once over `batch` sequences, in f32: the
    /// residual stream and its normalised copy, q, k, v and the attention's output, its scores
    /// before and after the softmax, and the MLP's hidden layer before and after its activation.
    fn activations(&self, batch: u64) -> u64 {
        let n = self.tokens;
        F32 * batch * (n * (6 * self.width + 2 * self.mlp) + 2 * self.heads * n * n)
    }
}

/// A CLIP dual encoder (PickScore, HPSv2, CLIP score, the aesthetic predictor's tower)
/// scoring `batch` images with their prompts.
pub fn clip(cfg: &ClipConfig, batch: usize) -> ScorerMemory {
    let (v, t) = (&cfg.vision_config, &cfg.text_config);
    let vision = Stack {
        layers: v.num_hidden_layers as u64,
        width: v.hidden_size as u64,
        mlp: v.intermediate_size as u64,
        heads: v.num_attention_heads as u64,
        tokens: v.num_positions() as u64,
    };
    let text = Stack {
        layers: t.num_hidden_layers as u64,
        width: t.hidden_size as u64,
        mlp: t.intermediate_size as u64,
        heads: t.num_attention_heads as u64,
        tokens: t.max_position_embeddings as u64,
    };
    let (proj, channels, patch) = (
        cfg.projection_dim as u64,
        v.num_channels as u64,
        v.patch_size as u64,
    );
    let (vw, tw) = (vision.width, text.width);
    // Patch embedding (no bias), class token, positions, pre- and post-LayerNorm, projection.
    let vision_params = vision.params()
        + channels * patch * patch * vw
        + vw
        + vision.tokens * vw
        + 4 * vw
        + vw * proj;
    // Token and position embeddings, the final LayerNorm, projection; and the logit scale.
    let text_params =
        text.params() + (t.vocab_size as u64 + text.tokens) * tw + 2 * tw + tw * proj + 1;
    let batch = batch as u64;
    let pixels = F32 * batch * channels * (v.image_size as u64).pow(2);
    ScorerMemory {
        weights: F32 * (vision_params + text_params),
        activations: pixels + vision.activations(batch).max(text.activations(batch)),
    }
}

/// ImageReward (BLIP's ViT, its multimodal text encoder and the reward head) scoring `batch`
/// images with their prompts (35 tokens each, as ImageReward pads them).
pub fn image_reward(vision: &BlipVisionConfig, med: &MedConfig, batch: usize) -> ScorerMemory {
    let grid = (vision.image_size / vision.patch_size) as u64;
    let vit = Stack {
        layers: vision.depth as u64,
        width: vision.embed_dim as u64,
        mlp: 4 * vision.embed_dim as u64,
        heads: vision.num_heads as u64,
        tokens: grid * grid + 1,
    };
    let (w, patch) = (vit.width, vision.patch_size as u64);
    // Patch embedding (with bias), class token, positions, the final LayerNorm.
    let vit_params = vit.params() + 3 * patch * patch * w + w + w + vit.tokens * w + 2 * w;
    // The cross-attention reads the ViT's width, whatever `med_config.json` says (the loader
    // sets `encoder_width` so, as ImageReward's `BLIP_Pretrain` does).
    let (h, e, i) = (med.hidden_size as u64, w, med.intermediate_size as u64);
    // Per layer: self-attention and its LayerNorm; cross-attention over the image (keys and
    // values from the ViT's width) and its LayerNorm; the feed-forward and its LayerNorm.
    let layer = 4 * (h * h + h)
        + 2 * h
        + 2 * (h * h + h)
        + 2 * (e * h + h)
        + 2 * h
        + (h * i + i)
        + (i * h + h)
        + 2 * h;
    let embeddings = (med.vocab_size as u64 + med.max_position_embeddings as u64) * h + 2 * h;
    let text_params = embeddings + med.num_hidden_layers as u64 * layer;
    let batch = batch as u64;
    let text_tokens = 35;
    let pixels = F32 * batch * 3 * (vision.image_size as u64).pow(2);
    // The text encoder's largest layer: its states and feed-forward, and the cross-attention's
    // keys and values over the image tokens with its scores.
    let text_activations = F32
        * batch
        * (text_tokens * (6 * h + 2 * i)
            + 2 * vit.tokens * h
            + 2 * med.num_attention_heads as u64 * text_tokens * vit.tokens);
    ScorerMemory {
        weights: F32 * (vit_params + text_params + head_params(h)),
        // The image tokens stay alive while the text encoder attends to them.
        activations: pixels
            + vit
                .activations(batch)
                .max(F32 * batch * vit.tokens * w + text_activations),
    }
}

/// The reward head's parameters after an input of `input` features.
fn head_params(input: u64) -> u64 {
    let mut from = input;
    HEAD.iter()
        .map(|&to| {
            let p = from * to + to;
            from = to;
            p
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::read_tensors;
    use std::path::{Path, PathBuf};

    fn fixture(rel: &str) -> Option<PathBuf> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/clip/models")
            .join(rel);
        if p.exists() {
            Some(p)
        } else {
            eprintln!("skipped: {} is missing", p.display());
            None
        }
    }

    /// Float parameters in a checkpoint whose names start with one of `prefixes` (all if
    /// none): buffers such as `position_ids` are integers.
    fn float_params(path: &Path, prefixes: &[&str]) -> u64 {
        read_tensors(path)
            .unwrap()
            .iter()
            .filter(|(k, t)| {
                t.dtype().is_float()
                    && (prefixes.is_empty() || prefixes.iter().any(|p| k.starts_with(p)))
            })
            .map(|(_, t)| t.elem_count() as u64)
            .sum()
    }

    #[test]
    fn clip_weights_are_the_checkpoints_parameters_in_f32() {
        for (dir, file) in [
            ("pickscore_tiny", "model.safetensors"),
            ("openai_tiny", "model.safetensors"),
            ("hps_tiny", "hps_tiny.pt"),
        ] {
            let Some(d) = fixture(dir) else { return };
            let cfg = ClipConfig::from_file(&d.join("config.json")).unwrap();
            let need = clip(&cfg, 1);
            assert_eq!(
                need.weights,
                F32 * float_params(&d.join(file), &[]),
                "{dir}"
            );
        }
    }

    #[test]
    fn image_reward_weights_are_the_used_parameters_in_f32() {
        let Some(d) = fixture("imagereward_tiny") else {
            return;
        };
        let med: MedConfig =
            serde_json::from_str(&std::fs::read_to_string(d.join("med_config.json")).unwrap())
                .unwrap();
        let vision: BlipVisionConfig =
            serde_json::from_str(&std::fs::read_to_string(d.join("vision_config.json")).unwrap())
                .unwrap();
        // The checkpoint also holds the unused projections (`blip.vision_proj`, `text_proj`).
        let used = float_params(
            &d.join("ImageReward.pt"),
            &["blip.visual_encoder.", "blip.text_encoder.", "mlp."],
        );
        assert_eq!(image_reward(&vision, &med, 1).weights, F32 * used);
    }

    #[test]
    fn activations_grow_with_the_batch_and_vit_h_needs_gigabytes() {
        let h = ClipConfig::vit_h_14();
        let (one, sixteen) = (clip(&h, 1), clip(&h, 16));
        assert_eq!(one.weights, sixteen.weights);
        assert!(sixteen.activations > 15 * one.activations);
        // ViT-H/14 with its text tower: 986M parameters, 3.9 GB in f32 (open_clip's count).
        let params = one.weights / F32;
        assert!((980_000_000..990_000_000).contains(&params), "{params}");
    }
}
