//! diffusers' `Attention` (`src/diffusers/models/attention_processor.py`, `AttnProcessor2_0`)
//! with LoRA-capable projections `to_q`, `to_k`, `to_v`, `to_out.0`.
//!
//! Softmax runs in f32 through `spo_nn::attention`, whose backward is recorded (candle's
//! `softmax_last_dim` has none).

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;
use spo_nn::attention::multi_head_attention;
use spo_nn::linear::linear_b;

use crate::error::{DiffusionError, Result};
use crate::lora::{LoraConfig, LoraLinear, LoraSwitch};

/// Shape of an [`Attention`] layer.
#[derive(Debug, Clone, Copy)]
pub struct AttentionSpec {
    /// Width of the queries and of the output.
    pub query_dim: usize,
    /// Width of the keys/values source; `None` for self-attention.
    pub cross_attention_dim: Option<usize>,
    /// Number of heads.
    pub heads: usize,
    /// Width of one head.
    pub dim_head: usize,
    /// Bias on to_q/to_k/to_v (false in the UNet, true in the VAE).
    pub bias: bool,
}

/// Multi-head attention with projections named as in diffusers.
#[derive(Debug, Clone)]
pub struct Attention {
    path: String,
    to_q: LoraLinear,
    to_k: LoraLinear,
    to_v: LoraLinear,
    to_out: LoraLinear,
    heads: usize,
}

impl Attention {
    /// Loads or creates `to_q`, `to_k`, `to_v`, `to_out.0` under `vb`.
    pub fn new(spec: AttentionSpec, vb: VarBuilder) -> Result<Self> {
        let inner = spec.heads * spec.dim_head;
        let kv_dim = spec.cross_attention_dim.unwrap_or(spec.query_dim);
        Ok(Self {
            path: vb.prefix(),
            to_q: LoraLinear::new(linear_b(spec.query_dim, inner, spec.bias, vb.pp("to_q"))?),
            to_k: LoraLinear::new(linear_b(kv_dim, inner, spec.bias, vb.pp("to_k"))?),
            to_v: LoraLinear::new(linear_b(kv_dim, inner, spec.bias, vb.pp("to_v"))?),
            to_out: LoraLinear::new(linear_b(
                inner,
                spec.query_dim,
                true,
                vb.pp("to_out").pp("0"),
            )?),
            heads: spec.heads,
        })
    }

    /// The dotted module path of this layer (e.g. `mid_block.attentions.0.transformer_blocks.0.attn2`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The projections by their module name relative to this layer.
    pub fn projections_mut(&mut self) -> [(&'static str, &mut LoraLinear); 4] {
        [
            ("to_q", &mut self.to_q),
            ("to_k", &mut self.to_k),
            ("to_v", &mut self.to_v),
            ("to_out.0", &mut self.to_out),
        ]
    }

    /// The projections by their module name relative to this layer.
    pub fn projections(&self) -> [(&'static str, &LoraLinear); 4] {
        [
            ("to_q", &self.to_q),
            ("to_k", &self.to_k),
            ("to_v", &self.to_v),
            ("to_out.0", &self.to_out),
        ]
    }

    /// Attaches adapters to the targeted projections: `lora_A.weight` `(r, in)` and
    /// `lora_B.weight` `(out, r)` are fetched from `vb` under `<path>.<module>` (created with
    /// PEFT's gaussian init when `vb` creates variables, read when it reads a LoRA file).
    pub fn add_lora(
        &mut self,
        config: &LoraConfig,
        switch: &LoraSwitch,
        vb: &VarBuilder,
    ) -> Result<()> {
        let path = self.path.clone();
        for (name, layer) in self.projections_mut() {
            if !config.target_modules.iter().any(|t| t == name) {
                continue;
            }
            let (out_dim, in_dim) = layer.dims()?;
            let module = vb.pp(&path).pp(name);
            let a = module
                .pp("lora_A")
                .get_with_hints((config.r, in_dim), "weight", config.init_a())
                .map_err(|e| DiffusionError::Lora(format!("{path}.{name}.lora_A.weight: {e}")))?;
            let b = module
                .pp("lora_B")
                .get_with_hints((out_dim, config.r), "weight", candle_nn::init::ZERO)
                .map_err(|e| DiffusionError::Lora(format!("{path}.{name}.lora_B.weight: {e}")))?;
            layer.attach(a, b, config.scale(), switch.clone());
        }
        Ok(())
    }

    /// `xs: (b, n, query_dim)`, `context: (b, m, cross_attention_dim)` or `None` for
    /// self-attention; returns `(b, n, query_dim)`.
    pub fn forward(&self, xs: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let context = context.unwrap_or(xs);
        // 1. projections (b, ·, heads·dim_head)
        let q = self.to_q.forward(xs)?;
        let k = self.to_k.forward(context)?;
        let v = self.to_v.forward(context)?;
        // 2. softmax(q·kᵀ/√d)·v per head
        let out = multi_head_attention(&q, &k, &v, self.heads)?;
        // 3. output projection (to_out.1 is dropout, the identity here)
        Ok(self.to_out.forward(&out)?)
    }
}
