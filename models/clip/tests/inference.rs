//! A CLIP whose weights are plain tensors (a loaded scorer or judge) takes inference paths
//! of its own: kept transposed weights, a one-pass QuickGELU, the patch embedding on spo-nn's
//! GEMM. They must give the bits of the same model built from `Var`s, which records a backward
//! pass through the ops the stored in-world artifacts were made with.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};
use spo_clip::{ClipConfig, ClipModel, ClipTextConfig, ClipVisionConfig};
use spo_nn::{Activation, SeededRng, named_vars, seeded_var_builder};

/// The in-world judges' shape: 32×32 images in 4×4 patches, width 64.
fn in_world(act: Activation) -> ClipConfig {
    ClipConfig {
        text_config: ClipTextConfig {
            vocab_size: 64,
            hidden_size: 64,
            intermediate_size: 256,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            max_position_embeddings: 8,
            hidden_act: act,
            layer_norm_eps: 1e-5,
            eos_token_id: 63,
        },
        vision_config: ClipVisionConfig {
            hidden_size: 64,
            intermediate_size: 256,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_channels: 3,
            image_size: 32,
            patch_size: 4,
            hidden_act: act,
            layer_norm_eps: 1e-5,
        },
        projection_dim: 32,
        logit_scale_init_value: 2.6592,
    }
}

fn bits(t: &Tensor) -> Result<Vec<u32>> {
    Ok(t.flatten_all()?
        .to_vec1::<f32>()?
        .iter()
        .map(|f| f.to_bits())
        .collect())
}

#[test]
fn a_model_of_plain_tensors_gives_the_bits_of_the_trainable_one() -> Result<()> {
    let dev = Device::Cpu;
    for act in [Activation::QuickGelu, Activation::Gelu] {
        let cfg = in_world(act);
        let varmap = VarMap::new();
        let trainable = ClipModel::new(&cfg, seeded_var_builder(&varmap, 7, DType::F32, &dev))?;
        let tensors: HashMap<_, _> = named_vars(&varmap)?
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().detach()))
            .collect();
        let plain = ClipModel::new(&cfg, VarBuilder::from_tensors(tensors, DType::F32, &dev))?;
        let mut rng = SeededRng::new(8);
        // 16 and 48 images: one and several row blocks of 128 in every linear layer; twice, so
        // the second call reads the transposed weights kept by the first
        for batch in [16, 48, 16] {
            let pixels = rng.normal((batch, 3, 32, 32), 0.0, 1.0, DType::F32, &dev)?;
            assert_eq!(
                bits(&plain.get_image_features(&pixels)?)?,
                bits(&trainable.get_image_features(&pixels)?)?,
                "{act:?}, batch {batch}"
            );
        }
        let ids = Tensor::new(
            &[[62u32, 5, 9, 63, 0, 0, 0, 0], [62, 7, 63, 0, 0, 0, 0, 0]],
            &dev,
        )?;
        assert_eq!(
            bits(&plain.get_text_features(&ids)?)?,
            bits(&trainable.get_text_features(&ids)?)?
        );
    }
    Ok(())
}
