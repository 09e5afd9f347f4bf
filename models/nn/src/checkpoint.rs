//! Gradient checkpointing: a forward pass run as a chain of segments that keep no graph, and a
//! backward pass that recomputes one segment at a time.
//!
//! candle keeps every intermediate of a differentiable forward alive until the backward pass
//! (each op holds its inputs), and its backward computes, and keeps to the end, a gradient for
//! every tensor it meets, frozen weights included. A [`Tape`] bounds both by one segment: the
//! forward keeps only each segment's outputs (detached), and [`Tape::backward`] walks the
//! segments last first, re-running each with its inputs as variables and differentiating
//! `Σ ⟨output, gradient⟩`, so that one segment's graph and gradients are alive at a time.
//!
//! ```
//! use candle_core::{DType, Device, Tensor, Var};
//! use spo_nn::checkpoint::Tape;
//!
//! let w = Var::new(&[2f32, 3.0], &Device::Cpu)?;
//! let x = Tensor::new(&[1f32, 4.0], &Device::Cpu)?;
//! let mut tape = Tape::new();
//! let h = tape.run(&[x], |xs| Ok(vec![xs[0].mul(w.as_tensor())?]))?.remove(0);
//! let y = tape.run(&[h], |xs| Ok(vec![xs[0].sqr()?]))?.remove(0);
//! // d/dw Σ (w·x)² = 2·w·x² = [4, 96]
//! let grads = tape.backward(&[(y, Tensor::ones(2, DType::F32, &Device::Cpu)?)], &[w.as_tensor()])?;
//! assert_eq!(grads.get(w.as_tensor()).unwrap().to_vec1::<f32>()?, [4.0, 96.0]);
//! # Ok::<(), candle_core::Error>(())
//! ```

use std::collections::{HashMap, HashSet};

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Result, Tensor, TensorId, Var};

/// What a segment computes from its inputs; run once forward and once more in the backward.
type Recompute<'a> = Box<dyn Fn(&[Tensor]) -> Result<Vec<Tensor>> + 'a>;

/// Where a forward written as segments runs them: [`Direct`]ly (an ordinary forward, candle's
/// graph and all) or on a [`Tape`] (checkpointed), so that a model writes its forward once.
pub trait Segments<'a> {
    /// `f` on `inputs`: its outputs.
    fn run(
        &mut self,
        inputs: &[Tensor],
        f: impl Fn(&[Tensor]) -> Result<Vec<Tensor>> + 'a,
    ) -> Result<Vec<Tensor>>;

    /// [`Segments::run`] for a segment of one output.
    fn run_one(
        &mut self,
        inputs: &[Tensor],
        f: impl Fn(&[Tensor]) -> Result<Tensor> + 'a,
    ) -> Result<Tensor> {
        self.run(inputs, move |xs| Ok(vec![f(xs)?]))?
            .pop()
            .ok_or_else(|| candle_core::Error::Msg("a segment gave no output".into()))
    }
}

/// Runs each segment as it comes: an ordinary forward.
pub struct Direct;

impl<'a> Segments<'a> for Direct {
    fn run(
        &mut self,
        inputs: &[Tensor],
        f: impl Fn(&[Tensor]) -> Result<Vec<Tensor>> + 'a,
    ) -> Result<Vec<Tensor>> {
        f(inputs)
    }
}

impl<'a> Segments<'a> for Tape<'a> {
    fn run(
        &mut self,
        inputs: &[Tensor],
        f: impl Fn(&[Tensor]) -> Result<Vec<Tensor>> + 'a,
    ) -> Result<Vec<Tensor>> {
        Tape::run(self, inputs, f)
    }
}

struct Segment<'a> {
    inputs: Vec<Tensor>,
    outputs: Vec<Tensor>,
    run: Recompute<'a>,
}

/// A forward pass recorded as segments, each with its inputs and (detached) outputs.
#[derive(Default)]
pub struct Tape<'a> {
    segments: Vec<Segment<'a>>,
    /// Ids of the tensors segments produced: the ones gradients flow back through.
    produced: HashSet<TensorId>,
}

impl<'a> Tape<'a> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `f` on `inputs` (outputs of earlier segments, or constants such as a text
    /// conditioning), records it, and returns its outputs detached: no graph outlives the call.
    /// `f` must compute the same outputs when run again (no randomness of its own).
    pub fn run(
        &mut self,
        inputs: &[Tensor],
        f: impl Fn(&[Tensor]) -> Result<Vec<Tensor>> + 'a,
    ) -> Result<Vec<Tensor>> {
        let outputs: Vec<Tensor> = f(inputs)?.iter().map(Tensor::detach).collect();
        self.produced.extend(outputs.iter().map(Tensor::id));
        self.segments.push(Segment {
            inputs: inputs.to_vec(),
            outputs: outputs.clone(),
            run: Box::new(f),
        });
        Ok(outputs)
    }

    /// The gradients of `Σ ⟨output, gradient⟩` over `seeds` (tensors the tape returned, each
    /// with the gradient of a loss with respect to it) for `params`, the variables the segments
    /// read (a LoRA's tensors): equal, up to the order of floating-point sums, to what
    /// `loss.backward()` gives through an ordinary forward. Only `params`' gradients are kept.
    pub fn backward(&self, seeds: &[(Tensor, Tensor)], params: &[&Tensor]) -> Result<GradStore> {
        let mut pending: HashMap<TensorId, Tensor> = HashMap::new();
        for (out, grad) in seeds {
            if !self.produced.contains(&out.id()) {
                candle_core::bail!("checkpoint: a seed is not a tensor this tape produced");
            }
            accumulate(&mut pending, out.id(), grad.detach().to_dtype(out.dtype())?)?;
        }
        let mut result = empty_grad_store()?;
        for segment in self.segments.iter().rev() {
            let grads: Vec<Option<Tensor>> = segment
                .outputs
                .iter()
                .map(|o| pending.remove(&o.id()))
                .collect();
            if grads.iter().all(Option::is_none) {
                continue;
            }
            // inputs that carry a gradient back become variables; constants stay as they are
            let inputs: Vec<(Tensor, Option<Tensor>)> = segment
                .inputs
                .iter()
                .map(|t| -> Result<_> {
                    Ok(if self.produced.contains(&t.id()) {
                        let var = Var::from_tensor(t)?.as_tensor().clone();
                        (var.clone(), Some(var))
                    } else {
                        (t.clone(), None)
                    })
                })
                .collect::<Result<_>>()?;
            let xs: Vec<Tensor> = inputs.iter().map(|(x, _)| x.clone()).collect();
            let outputs = (segment.run)(&xs)?;
            if outputs.len() != grads.len() {
                candle_core::bail!(
                    "checkpoint: a segment returned {} outputs when recomputed, {} before",
                    outputs.len(),
                    grads.len()
                );
            }
            let mut surrogate: Option<Tensor> = None;
            for (out, grad) in outputs.iter().zip(&grads) {
                let Some(grad) = grad else { continue };
                let term = (out * grad)?.to_dtype(DType::F32)?.sum_all()?;
                surrogate = Some(match surrogate {
                    None => term,
                    Some(s) => (s + term)?,
                });
            }
            let Some(surrogate) = surrogate else { continue };
            if !surrogate.track_op() {
                continue; // nothing this segment reads is differentiable
            }
            let store = surrogate.backward()?;
            for (original, (_, var)) in segment.inputs.iter().zip(&inputs) {
                if let Some(g) = var.as_ref().and_then(|v| store.get(v)) {
                    // candle's backward records a graph for a gradient computed with a
                    // variable (g·Wᵀ); the next segment must not differentiate through it
                    accumulate(&mut pending, original.id(), g.detach())?;
                }
            }
            for param in params {
                if let Some(g) = store.get(param) {
                    let g = g.detach();
                    let total = match result.get(param) {
                        Some(sum) => (sum + g)?,
                        None => g,
                    };
                    result.insert(param, total);
                }
            }
        }
        Ok(result)
    }
}

fn accumulate(pending: &mut HashMap<TensorId, Tensor>, id: TensorId, grad: Tensor) -> Result<()> {
    let total = match pending.remove(&id) {
        Some(sum) => (sum + grad)?,
        None => grad,
    };
    pending.insert(id, total);
    Ok(())
}

/// candle makes a `GradStore` only by differentiating: one of a constant, emptied.
fn empty_grad_store() -> Result<GradStore> {
    let one = Tensor::ones((), DType::F32, &Device::Cpu)?;
    let mut store = one.backward()?;
    store.remove(&one);
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SeededRng;

    fn normal(rng: &mut SeededRng, shape: (usize, usize)) -> Result<Tensor> {
        rng.normal(shape, 0.0, 1.0, DType::F32, &Device::Cpu)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
    }

    /// h₁ = tanh(x·W₁), h₂ = tanh(h₁·W₂) + h₁ (a skip), y = h₂·W₃ + h₁·W₁ + b: h₁ is read by
    /// three segments, W₁ by two, b is a constant.
    fn layer(x: &Tensor, w: &Var) -> Result<Tensor> {
        x.matmul(w.as_tensor())?.tanh()
    }

    #[test]
    fn recomputed_gradients_equal_the_graph_s_with_skips_and_a_constant() -> Result<()> {
        let mut rng = SeededRng::new(7);
        let w: Vec<Var> = (0..3)
            .map(|_| Var::from_tensor(&normal(&mut rng, (4, 4))?))
            .collect::<Result<_>>()?;
        let x = normal(&mut rng, (3, 4))?;
        let bias = normal(&mut rng, (3, 4))?; // a constant input of a segment
        let target = normal(&mut rng, (3, 4))?;
        let loss_of = |y: &Tensor| (y - &target)?.sqr()?.sum_all();

        let h1 = layer(&x, &w[0])?;
        let h2 = (layer(&h1, &w[1])? + &h1)?;
        let y = ((h2.matmul(w[2].as_tensor())? + h1.matmul(w[0].as_tensor())?)? + &bias)?;
        let direct = loss_of(&y)?.backward()?;
        let mut tape = Tape::new();
        let h1t = tape.run(std::slice::from_ref(&x), |xs| {
            Ok(vec![layer(&xs[0], &w[0])?])
        })?;
        let h2t = tape.run(&[h1t[0].clone()], |xs| {
            Ok(vec![(layer(&xs[0], &w[1])? + &xs[0])?])
        })?;
        let yt = tape.run(&[h2t[0].clone(), h1t[0].clone(), bias.clone()], |xs| {
            let skip = xs[1].matmul(w[0].as_tensor())?;
            Ok(vec![((xs[0].matmul(w[2].as_tensor())? + skip)? + &xs[2])?])
        })?;
        assert_eq!(max_diff(&yt[0], &y)?, 0.0, "the forward is the same");
        assert!(!yt[0].track_op(), "the tape keeps no graph");
        let yv = Var::from_tensor(&yt[0])?;
        let g = loss_of(yv.as_tensor())?.backward()?;
        let g = g.get(yv.as_tensor()).expect("the loss reads y").clone();
        let params: Vec<&Tensor> = w.iter().map(Var::as_tensor).collect();
        let taped = tape.backward(&[(yt[0].clone(), g)], &params)?;
        for p in &params {
            let (a, b) = (direct.get(p).unwrap(), taped.get(p).unwrap());
            let scale = a.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(max_diff(a, b)? <= 1e-6 * scale.max(1.0), "{a} vs {b}");
        }
        assert_eq!(
            taped.get_ids().count(),
            3,
            "only the parameters' gradients are kept"
        );
        Ok(())
    }

    #[test]
    fn a_seed_the_tape_did_not_produce_is_refused() -> Result<()> {
        let tape = Tape::new();
        let t = Tensor::ones(2, DType::F32, &Device::Cpu)?;
        let err = tape.backward(&[(t.clone(), t)], &[]).unwrap_err();
        assert!(err.to_string().contains("not a tensor this tape produced"));
        Ok(())
    }
}
