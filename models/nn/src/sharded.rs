//! Gradients of a batch computed shard by shard, on as many threads as are free; gradients of
//! micro-batches added up ([`add_gradients`]); and clipped by their global norm
//! ([`clip_grad_norm`]).
//!
//! candle parallelises inside each op, which on a small model costs more in synchronisation than
//! it gains; splitting the batch into a fixed number of shards and back-propagating each as its
//! own task on rayon's pool scales instead. The shards are fixed by the caller, not by the
//! threads: their gradients are summed in shard order, so the result is bit-identical whether
//! the shards ran on one thread or on many.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use rayon::prelude::*;

/// One shard's loss, its gradient per variable, and (shard 0 only) its whole gradient store.
type Part = (f64, Vec<Option<Tensor>>, Option<GradStore>);

/// The loss `Σ_s loss(s)` over `shards` shards and its gradients with respect to `vars`, the
/// shards run in parallel on a pool of `threads` threads ([`crate::threads::install`]).
/// `loss(s)` returns shard `s`'s scalar part of the loss (already scaled so that the parts add
/// up to the batch's loss).
pub fn sharded_backward<F, E>(
    shards: usize,
    threads: usize,
    vars: &[Var],
    loss: F,
) -> std::result::Result<(f64, GradStore), E>
where
    F: Fn(usize) -> std::result::Result<Tensor, E> + Sync,
    E: From<candle_core::Error> + Send,
{
    let shards = shards.max(1);
    // Shard 0's store is kept to carry the sums (candle has no public constructor for one).
    let one = |s: usize| -> std::result::Result<Part, E> {
        let l = loss(s)?;
        let value = f64::from(l.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?);
        let grads = l.backward()?;
        let per_var = vars
            .iter()
            .map(|v| grads.get(v.as_tensor()).cloned())
            .collect();
        Ok((value, per_var, (s == 0).then_some(grads)))
    };
    // On a pool of `threads` threads, so that the kernels' own parallel loops nest inside the
    // shards instead of queueing behind them (and run in place on one thread).
    let parts: Vec<std::result::Result<Part, E>> =
        crate::threads::install(threads, || (0..shards).into_par_iter().map(one).collect())?;
    let mut total = 0.0;
    let mut sums: Vec<Option<Tensor>> = vec![None; vars.len()];
    let mut store = None;
    for part in parts {
        let (value, grads, kept) = part?;
        total += value;
        store = store.or(kept);
        for (sum, g) in sums.iter_mut().zip(grads) {
            *sum = match (sum.take(), g) {
                (Some(a), Some(b)) => Some((a + b)?),
                (a, b) => a.or(b),
            };
        }
    }
    let mut store =
        store.ok_or_else(|| candle_core::Error::Msg("shard 0 kept no gradients".into()))?;
    for (v, g) in vars.iter().zip(sums) {
        match g {
            Some(g) => store.insert(v.as_tensor(), g),
            None => store.remove(v.as_tensor()),
        };
    }
    Ok((total, store))
}

/// Adds the gradients of `vars` in `more` into `sum` (taking `more` as it is while `sum` is
/// empty), as micro-batches accumulate before one optimiser step (a variable with a gradient
/// in only one of them keeps that one).
pub fn add_gradients<'a>(
    sum: &mut Option<GradStore>,
    more: GradStore,
    vars: impl IntoIterator<Item = &'a Var>,
) -> candle_core::Result<()> {
    let Some(sum) = sum else {
        *sum = Some(more);
        return Ok(());
    };
    for var in vars {
        if let Some(g) = more.get(var) {
            let total = match sum.get(var) {
                Some(s) => (s + g)?,
                None => g.clone(),
            };
            sum.insert(var, total);
        }
    }
    Ok(())
}

/// Scales the gradients of `vars` in `grads` so that their global 2-norm is at most
/// `max_norm`, as PyTorch's `clip_grad_norm_` does (by `max_norm / (norm + 1e-6)` when that is
/// below 1); returns the norm before clipping. The references' Diffusion-DPO, D3PO and DDPO
/// trainers clip at 1.0.
pub fn clip_grad_norm<'a>(
    grads: &mut GradStore,
    vars: impl IntoIterator<Item = &'a Var>,
    max_norm: f64,
) -> candle_core::Result<f64> {
    let present: Vec<(&Var, Tensor)> = vars
        .into_iter()
        .filter_map(|v| grads.get(v).map(|g| (v, g.clone())))
        .collect();
    let mut squares = 0f64;
    for (_, g) in &present {
        squares += g
            .to_dtype(candle_core::DType::F64)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f64>()?;
    }
    let norm = squares.sqrt();
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        for (v, g) in present {
            grads.insert(v, (g * coef)?);
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SeededRng;
    use candle_core::{D, DType, Device, Result};

    /// A two-layer model's loss on rows `lo..hi` of a batch, scaled by the whole batch.
    fn part(w1: &Var, w2: &Var, x: &Tensor, lo: usize, hi: usize, n: usize) -> Result<Tensor> {
        let h = x.narrow(0, lo, hi - lo)?.matmul(w1.as_tensor())?.tanh()?;
        let y = h.matmul(w2.as_tensor())?;
        y.sqr()?.sum(D::Minus1)?.sum_all()? / n as f64
    }

    #[test]
    fn clipping_scales_to_the_global_norm_only_above_it() -> Result<()> {
        let dev = Device::Cpu;
        // gradients (3, 4) and (12): global norm 13
        let a = Var::new(&[1f32, 2.0], &dev)?;
        let b = Var::new(&[5f32], &dev)?;
        let loss = ((a.as_tensor() * &Tensor::new(&[3f32, 4.0], &dev)?)?.sum_all()?
            + (b.as_tensor() * 12.0)?.sum_all()?)?;
        let mut grads = loss.backward()?;
        let norm = clip_grad_norm(&mut grads, [&a, &b], 1.0)?;
        assert!((norm - 13.0).abs() < 1e-9, "{norm}");
        let ga = grads.get(&a).expect("a").to_vec1::<f32>()?;
        let gb = grads.get(&b).expect("b").to_vec1::<f32>()?;
        let scale = 1.0 / (13.0 + 1e-6);
        for (got, want) in ga.iter().chain(&gb).zip([3.0, 4.0, 12.0]) {
            assert!(
                (*got as f64 - want * scale).abs() < 1e-6,
                "{got} vs {}",
                want * scale
            );
        }
        // under the limit nothing changes
        let mut grads = loss.backward()?;
        assert!((clip_grad_norm(&mut grads, [&a, &b], 20.0)? - 13.0).abs() < 1e-9);
        assert_eq!(grads.get(&b).expect("b").to_vec1::<f32>()?, [12.0]);
        Ok(())
    }

    #[test]
    fn shards_sum_to_the_whole_batch_and_threads_change_nothing() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = SeededRng::new(7);
        let w1 = Var::from_tensor(&rng.normal((5, 6), 0.0, 0.5, DType::F32, &dev)?)?;
        let w2 = Var::from_tensor(&rng.normal((6, 3), 0.0, 0.5, DType::F32, &dev)?)?;
        let x = rng.normal((12, 5), 0.0, 1.0, DType::F32, &dev)?;
        let vars = [w1.clone(), w2.clone()];

        let whole = part(&w1, &w2, &x, 0, 12, 12)?;
        let whole_grads = whole.backward()?;
        let shard = |s: usize| part(&w1, &w2, &x, 4 * s, 4 * s + 4, 12);
        let (l1, g1) = sharded_backward(3, 1, &vars, shard)?;
        let (l3, g3) = sharded_backward(3, 3, &vars, shard)?;
        let (l2, g2) = sharded_backward(3, 2, &vars, shard)?;

        let whole_loss = f64::from(whole.to_scalar::<f32>()?);
        assert!((l1 - whole_loss).abs() < 1e-5, "{l1} vs {whole_loss}");
        for v in &vars {
            let reference = whole_grads
                .get(v.as_tensor())
                .expect("grad")
                .flatten_all()?;
            let one = g1.get(v.as_tensor()).expect("grad").flatten_all()?;
            let diff = (&reference - &one)?.abs()?.max(0)?.to_scalar::<f32>()?;
            assert!(
                diff < 1e-5,
                "sharded gradient differs from the batch's by {diff}"
            );
            for other in [&g2, &g3] {
                let o = other.get(v.as_tensor()).expect("grad").flatten_all()?;
                assert_eq!(one.to_vec1::<f32>()?, o.to_vec1::<f32>()?, "bit-identical");
            }
        }
        assert_eq!(l1.to_bits(), l3.to_bits());
        assert_eq!(l1.to_bits(), l2.to_bits());
        Ok(())
    }

    #[test]
    fn a_failing_shard_fails_the_step() {
        let v = Var::new(&[1f32], &Device::Cpu).expect("var");
        let r = sharded_backward(2, 2, &[v], |s| {
            if s == 1 {
                Err(candle_core::Error::Msg("shard 1 broke".into()))
            } else {
                Tensor::new(1f32, &Device::Cpu)
            }
        });
        assert!(r.is_err_and(|e| e.to_string().contains("shard 1 broke")));
    }
}
