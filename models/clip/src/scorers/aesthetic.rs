//! The LAION aesthetic predictor v2 head (christophschuhmann/improved-aesthetic-predictor,
//! `sac+logos+ava1-l14-linearMSE.pth`): five Linear layers 768 → 1024 → 128 → 64 → 16 → 1
//! with dropouts and no activations, applied to the L2-normalised CLIP ViT-L/14 image
//! embedding. Keys `layers.{0,2,4,6,7}.{weight,bias}` (the indices skip the dropouts).
//! ImageReward's head has the same shape (`mlp.layers.*`, input 768) and reuses this type.
//!
//! The head is evaluated in f64, layer by layer.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::error::ClipError;
use crate::weights::CheckedWeights;

/// Hidden widths after the input: the class in both repositories hard-codes them.
const WIDTHS: [usize; 5] = [1024, 128, 64, 16, 1];
/// State-dict indices of the Linear layers inside `nn.Sequential`.
const INDICES: [usize; 5] = [0, 2, 4, 6, 7];

/// The affine MLP head, weights held as f64 rows.
#[derive(Debug, Clone)]
pub struct MlpHead {
    /// `(weight (out × in) row-major, bias)` per layer.
    layers: Vec<(Vec<f64>, Vec<f64>)>,
    input: usize,
}

impl MlpHead {
    /// Reads `layers.{0,2,4,6,7}` under `prefix` (e.g. `""` or `"mlp."`) for input width
    /// `input`, checking every shape.
    pub fn from_weights(
        weights: &CheckedWeights,
        prefix: &str,
        input: usize,
    ) -> Result<Self, ClipError> {
        weights.build(DType::F64, &Device::Cpu, |vb| {
            let vb = vb.pp(format!("{prefix}layers"));
            let mut layers = Vec::with_capacity(5);
            let mut fan_in = input;
            for (index, out) in INDICES.iter().zip(WIDTHS) {
                let w = vb.pp(index.to_string()).get((out, fan_in), "weight")?;
                let b = vb.pp(index.to_string()).get(out, "bias")?;
                layers.push((w.flatten_all()?.to_vec1::<f64>()?, b.to_vec1::<f64>()?));
                fan_in = out;
            }
            Ok(Self { layers, input })
        })
    }

    /// Loads the head file (`.pth` or `.safetensors`) with keys `layers.*`.
    pub fn load(path: &Path, input: usize) -> Result<Self, ClipError> {
        Self::from_weights(&CheckedWeights::open(path)?, "", input)
    }

    /// The input width.
    pub fn input(&self) -> usize {
        self.input
    }

    /// The head applied to one `input`-wide vector.
    pub fn apply(&self, x: &[f64]) -> f64 {
        let mut h = x.to_vec();
        for (w, b) in &self.layers {
            let fan_in = h.len();
            h = b
                .iter()
                .enumerate()
                .map(|(o, bias)| {
                    bias + w[o * fan_in..(o + 1) * fan_in]
                        .iter()
                        .zip(&h)
                        .map(|(a, v)| a * v)
                        .sum::<f64>()
                })
                .collect();
        }
        h[0]
    }

    /// The head applied to each row of a `(b, input)` tensor.
    pub fn apply_rows(&self, xs: &Tensor) -> Result<Vec<f64>, ClipError> {
        let rows = xs.to_dtype(DType::F64)?.to_vec2::<f64>()?;
        Ok(rows.iter().map(|r| self.apply(r)).collect())
    }
}
