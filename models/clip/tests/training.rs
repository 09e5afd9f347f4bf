//! A CLIP built from a config in a `VarMap` trains: every variable (class embedding and
//! `logit_scale` included, which candle-transformers' CLIP leaves as constants) receives a
//! gradient through the symmetric contrastive loss, and seeded construction is reproducible.

use candle_core::{D, DType, Device, Result, Tensor};
use candle_nn::VarMap;
use spo_clip::{ClipConfig, ClipModel, ClipTextConfig, ClipVisionConfig, l2_normalize};
use spo_nn::{Activation, SeededRng, named_vars, seeded_var_builder, vars_without_gradient};

fn tiny() -> ClipConfig {
    ClipConfig {
        text_config: ClipTextConfig {
            vocab_size: 64,
            hidden_size: 16,
            intermediate_size: 32,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            max_position_embeddings: 8,
            hidden_act: Activation::Gelu,
            layer_norm_eps: 1e-5,
            eos_token_id: 63,
        },
        vision_config: ClipVisionConfig {
            hidden_size: 16,
            intermediate_size: 32,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            num_channels: 3,
            image_size: 16,
            patch_size: 8,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
        },
        projection_dim: 8,
        logit_scale_init_value: 2.6592,
    }
}

#[test]
fn tiny_clip_from_config_trains_every_variable() -> Result<()> {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let model = ClipModel::new(&tiny(), seeded_var_builder(&varmap, 3, DType::F32, &dev))?;
    let pixels = SeededRng::new(4).normal((2, 3, 16, 16), 0.0, 1.0, DType::F32, &dev)?;
    let ids = Tensor::new(
        &[[62u32, 5, 9, 63, 0, 0, 0, 0], [62, 7, 63, 0, 0, 0, 0, 0]],
        &dev,
    )?;
    let img = l2_normalize(&model.get_image_features(&pixels)?)?;
    let txt = l2_normalize(&model.get_text_features(&ids)?)?;
    // (2, 2) logits; the matching pairs are on the diagonal.
    let logits = img
        .matmul(&txt.t()?)?
        .broadcast_mul(&model.logit_scale().exp()?)?;
    let diag = Tensor::eye(2, DType::F32, &dev)?;
    let loss_i = (candle_nn::ops::log_softmax(&logits, D::Minus1)? * &diag)?
        .sum_all()?
        .neg()?;
    let loss_t = (candle_nn::ops::log_softmax(&logits.t()?, D::Minus1)? * &diag)?
        .sum_all()?
        .neg()?;
    let grads = (loss_i + loss_t)?.backward()?;
    let vars = named_vars(&varmap)?;
    assert!(vars.iter().any(|(n, _)| n == "logit_scale"));
    assert!(
        vars.iter()
            .any(|(n, _)| n == "vision_model.embeddings.class_embedding")
    );
    let missing = vars_without_gradient(&vars, &grads)?;
    assert!(missing.is_empty(), "no gradient for {missing:?}");

    let again = VarMap::new();
    let twin = ClipModel::new(&tiny(), seeded_var_builder(&again, 3, DType::F32, &dev))?;
    let a = model
        .get_image_features(&pixels)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let b = twin
        .get_image_features(&pixels)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    assert_eq!(a, b, "same seed, same model");
    Ok(())
}
