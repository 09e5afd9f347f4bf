//! SPO on Stable Diffusion latents: the LoRA policy with classifier-free guidance as
//! spo-methods' [`Denoiser`] (the reference is the same UNet with its LoRA off), and a released
//! step-aware preference model scoring VAE-decoded x₀-predictions as its [`StepJudge`], as
//! SPO's `multi_sample_pipeline` and `get_preference_score` run them.

use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use spo_clip::preprocess::spm_pixels;
use spo_clip::{ClipTokenizer, Spm};
use spo_diffusion::{AddedConditioning, LoraConfig, UNet2DConditionModel, guided_prediction_with};
use spo_methods::spo::{Denoiser, StepJudge, TrainingEps};
use spo_nn::checkpoint::{Direct, Segments, Tape};
use spo_nn::seeded_var_builder;

use crate::error::Result;
use crate::pipeline::{Conditioning, StableDiffusion};

/// The side the SPM's image tower takes (PickScore's CLIP-H/14: 224).
pub const SPM_IMAGE_SIZE: usize = 224;

impl StableDiffusion {
    /// Gives the UNet a trainable LoRA whose tensors live in `varmap`: those already there (a
    /// checkpoint's, a loaded LoRA's) are used as they are, the others drawn from `seed` as
    /// PEFT initialises them (A Gaussian, B zero: the policy starts as the base).
    pub fn add_trainable_lora(
        &mut self,
        config: &LoraConfig,
        varmap: &VarMap,
        seed: u64,
    ) -> Result<()> {
        let dev = self.device().clone();
        let vb = seeded_var_builder(varmap, seed, candle_core::DType::F32, &dev);
        Ok(self.unet_mut().add_lora(config, &vb)?)
    }

    /// Gives the UNet a trainable LoRA that starts from the LoRA file at `path` (diffusers /
    /// PEFT layout, or spo-pipe's), its tensors put into `varmap` as variables.
    pub fn load_trainable_lora(&mut self, path: &Path, varmap: &VarMap) -> Result<LoraConfig> {
        let mut probe = self.unet().clone();
        let config = probe.load_lora(path)?;
        {
            let mut data = varmap.data().lock().map_err(|_| {
                candle_core::Error::Msg("the LoRA's variable map lock is poisoned".into())
            })?;
            for (name, tensor) in probe.lora_tensors() {
                data.insert(name, Var::from_tensor(&tensor)?);
            }
        }
        self.add_trainable_lora(&config, varmap, 0)?;
        Ok(config)
    }
}

/// The guided LoRA policy of a pipeline.
pub struct SdPolicy<'a> {
    pub sd: &'a StableDiffusion,
    /// Guidance scale (SPO: 5).
    pub cfg: f64,
    /// Latents per UNet call: a rollout's pool (k × prompts) is run this many at a time, so
    /// that its size does not set the memory a round needs.
    pub micro_batch: usize,
    /// Gradient checkpointing of the training forward: the UNet runs on a
    /// [`Tape`] and its backward recomputes one layer at a time.
    pub checkpointing: bool,
}

/// `f` over `x`'s rows `size` at a time, the results concatenated (rows of `rows` go along).
fn in_chunks<R>(
    x: &Tensor,
    size: usize,
    mut f: impl FnMut(&Tensor, std::ops::Range<usize>) -> candle_core::Result<R>,
) -> candle_core::Result<Vec<R>> {
    let n = x.dim(0)?;
    let size = size.max(1);
    (0..n)
        .step_by(size)
        .map(|s| {
            let len = size.min(n - s);
            f(&x.narrow(0, s, len)?, s..s + len)
        })
        .collect()
}

/// The conditioning of `rows` of a batch of `n`: `None` when they are all of it.
fn prompts_of(
    prompts: &Conditioning,
    rows: &std::ops::Range<usize>,
    n: usize,
) -> candle_core::Result<Option<Conditioning>> {
    if rows.len() == n {
        return Ok(None);
    }
    let idx: Vec<u32> = rows.clone().map(|r| r as u32).collect();
    prompts.select(&idx).map(Some)
}

impl<'a> SdPolicy<'a> {
    /// The guided ε̂ of `x` (`ts` per row) in the pipeline's dtype, one UNet call per
    /// `micro_batch` rows, each call's segments run by `segs`.
    fn calls(
        &self,
        segs: &mut impl Segments<'a>,
        prompts: &Conditioning,
        x: &Tensor,
        ts: &[usize],
    ) -> candle_core::Result<Vec<Tensor>> {
        let unet = self.sd.unet();
        in_chunks(x, self.micro_batch, |x, rows| {
            let part = prompts_of(prompts, &rows, ts.len())?;
            let inputs = part.as_ref().unwrap_or(prompts).guidance(self.cfg);
            let x = x.to_dtype(self.sd.dtype())?;
            guided_prediction_with(unet, segs, &x, &ts[rows], &inputs)
                .map_err(candle_core::Error::wrap)
        })
    }
}

impl Denoiser for SdPolicy<'_> {
    type Prompts = Conditioning;
    fn encode(&self, texts: &[&str]) -> candle_core::Result<Conditioning> {
        self.sd
            .conditioning(texts)
            .map_err(candle_core::Error::wrap)
    }
    fn eps(
        &self,
        prompts: &Conditioning,
        x: &Tensor,
        ts: &[usize],
        reference: bool,
    ) -> candle_core::Result<Tensor> {
        let unet = self.sd.unet();
        unet.set_lora_enabled(!reference);
        // the UNet runs in the pipeline's dtype; the method's log-probabilities in f32
        let eps = self
            .calls(&mut Direct, prompts, x, ts)
            .and_then(|calls| Tensor::cat(&calls, 0)?.to_dtype(DType::F32));
        unet.set_lora_enabled(true);
        let eps = eps?;
        Ok(if reference { eps.detach() } else { eps })
    }
    fn eps_no_grad(
        &self,
        prompts: &Conditioning,
        x: &Tensor,
        ts: &[usize],
    ) -> candle_core::Result<Tensor> {
        let unet = self.sd.unet();
        unet.set_lora_tracked(false);
        let eps = self.eps(prompts, x, ts, false);
        unet.set_lora_tracked(true);
        eps
    }
    fn eps_for_training(
        &self,
        prompts: &Conditioning,
        x: &Tensor,
        ts: &[usize],
    ) -> candle_core::Result<TrainingEps<'_>> {
        if !self.checkpointing {
            return Ok(TrainingEps::Graph(self.eps(prompts, x, ts, false)?));
        }
        checkpointed(self.sd.unet(), |tape| self.calls(tape, prompts, x, ts))
    }
    fn select(&self, prompts: &Conditioning, rows: &[u32]) -> candle_core::Result<Conditioning> {
        prompts.select(rows)
    }
    fn sample_size(&self) -> usize {
        self.sd.latent_shape()[1]
    }
    fn channels(&self) -> usize {
        self.sd.latent_shape()[0]
    }
    fn device(&self) -> &Device {
        self.sd.device()
    }
}

/// A checkpointed training forward: `calls` runs the UNet's calls on a tape (the adapters
/// untracked, so that the forward keeps no graph, only each layer's output); their outputs
/// joined in f32, and the LoRA's gradients recomputed layer by layer in the backward.
fn checkpointed<'a>(
    unet: &'a UNet2DConditionModel,
    calls: impl FnOnce(&mut Tape<'a>) -> candle_core::Result<Vec<Tensor>>,
) -> candle_core::Result<TrainingEps<'a>> {
    let mut tape = Tape::new();
    unet.set_lora_tracked(false);
    let outputs = calls(&mut tape);
    unet.set_lora_tracked(true);
    let outputs = outputs?;
    let eps = Tensor::cat(&outputs, 0)?.to_dtype(DType::F32)?;
    Ok(TrainingEps::Recomputed {
        eps,
        backward: Box::new(move |g| {
            let mut seeds = Vec::with_capacity(outputs.len());
            let mut row = 0;
            for out in outputs {
                let n = out.dim(0)?;
                seeds.push((out, g.narrow(0, row, n)?));
                row += n;
            }
            let lora: Vec<Tensor> = unet.lora_tensors().into_iter().map(|(_, t)| t).collect();
            tape.backward(&seeds, &lora.iter().collect::<Vec<_>>())
        }),
    })
}

/// A batch for unguided UNet calls (the offline methods' denoising errors): latents, a
/// timestep per row, text states and SDXL's added conditioning, one row per latent.
pub struct UnetBatch<'t> {
    pub x: &'t Tensor,
    pub ts: &'t Tensor,
    pub context: &'t Tensor,
    pub added: Option<&'t AddedConditioning>,
}

impl UnetBatch<'_> {
    /// The UNet's prediction in f32 on every row, `micro_batch` rows per call, each call's
    /// segments run by `segs`; the latents cast to the UNet's dtype.
    fn calls<'a>(
        &self,
        unet: &'a UNet2DConditionModel,
        segs: &mut impl Segments<'a>,
        micro_batch: usize,
        dtype: DType,
    ) -> candle_core::Result<Vec<Tensor>> {
        in_chunks(self.x, micro_batch, |x, rows| {
            let part = |t: &Tensor| t.narrow(0, rows.start, rows.len());
            let added = match self.added {
                Some(a) => Some(AddedConditioning {
                    text_embeds: part(&a.text_embeds)?,
                    time_ids: part(&a.time_ids)?,
                }),
                None => None,
            };
            unet.forward_with(
                segs,
                &x.to_dtype(dtype)?,
                &part(self.ts)?,
                &part(self.context)?,
                added.as_ref(),
            )
            .map_err(candle_core::Error::wrap)
        })
    }

    /// The UNet's prediction without a graph (the frozen reference's, with its LoRA off),
    /// f32, `micro_batch` rows per call.
    pub fn predict(
        &self,
        unet: &UNet2DConditionModel,
        micro_batch: usize,
        dtype: DType,
    ) -> candle_core::Result<Tensor> {
        let calls = self.calls(unet, &mut Direct, micro_batch, dtype)?;
        Tensor::cat(&calls, 0)?
            .to_dtype(DType::F32)
            .map(|t| t.detach())
    }

    /// The UNet's prediction for a training step, f32: with candle's graph, or with
    /// `checkpointing` recorded on a tape and recomputed layer by layer in the backward (then
    /// `micro_batch` rows per call). Without checkpointing it is one call, as the graph of
    /// every row is kept anyway.
    pub fn predict_for_training<'a>(
        &self,
        unet: &'a UNet2DConditionModel,
        micro_batch: usize,
        dtype: DType,
        checkpointing: bool,
    ) -> candle_core::Result<TrainingEps<'a>> {
        if !checkpointing {
            let calls = self.calls(unet, &mut Direct, usize::MAX, dtype)?;
            return Ok(TrainingEps::Graph(
                Tensor::cat(&calls, 0)?.to_dtype(DType::F32)?,
            ));
        }
        checkpointed(unet, |tape| self.calls(unet, tape, micro_batch, dtype))
    }
}

/// A step-aware preference model judging latent x₀-predictions: the pipeline's VAE decodes
/// them (`latents / scaling_factor`), [`spm_pixels`] prepares them, the SPM scores them at `t`
/// with the prompt (`exp(logit_scale)·cos`).
pub struct SpmJudge<'a> {
    pub sd: &'a StableDiffusion,
    pub spm: &'a Spm,
    /// The SPM's tokenizer (PickScore's: the CLIP BPE, HF cleaning).
    pub tokenizer: &'a ClipTokenizer,
    /// x̂₀-predictions decoded and scored at a time.
    pub micro_batch: usize,
}

impl StepJudge for SpmJudge<'_> {
    fn scores(&self, x0: &Tensor, texts: &[&str], t: usize) -> candle_core::Result<Vec<f64>> {
        let parts = in_chunks(x0, self.micro_batch, |x0, rows| {
            let decoded = self.sd.decode_raw(x0).map_err(candle_core::Error::wrap)?;
            let pixels = spm_pixels(&decoded, SPM_IMAGE_SIZE).map_err(candle_core::Error::wrap)?;
            let ids = self
                .tokenizer
                .encode_batch(&texts[rows.clone()], x0.device())
                .map_err(candle_core::Error::wrap)?;
            self.spm.score(&pixels, &ids, &vec![t as f32; rows.len()])
        })?;
        Ok(parts.concat())
    }
}
