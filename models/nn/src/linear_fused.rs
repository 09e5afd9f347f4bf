//! A linear layer `y = x·Wᵀ + b` over `(rows, in)` inputs as one CPU op with its own backward.
//!
//! candle's `Linear` multiplies by the transposed view `Wᵀ` and adds the bias by broadcasting:
//! backward then reduces the bias gradient with a scalar `sum_keepdim`, transposes the weight
//! gradient back through a strided copy, and accumulates each into a fresh zero tensor. Here
//! `dx = dy·W`, `dW = dyᵀ·x` and `db = Σ_rows dy` are written directly, and a gradient is
//! skipped for an operand that does not track one (a frozen base weight under LoRA). Rows are
//! processed in fixed blocks, so results are bit-identical for any number of threads.

use crate::cpu_slice::{TensorSlice, grad_tensor, storage_slice};
use crate::gemm::{View, gemm, transpose};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Rows per parallel block.
pub(crate) const BLOCK: usize = 128;

/// `x·Wᵀ` (two operands) or `x·Wᵀ + b` (three) for `x: (rows, in)`, `W: (out, in)`,
/// `b: (out,)` (f32, CPU, contiguous operands).
#[derive(Debug, Clone, Copy)]
pub struct LinearOp;

/// `(rows, in, out)` after checking the operand shapes.
pub(crate) fn sizes(
    x: &[usize],
    w: &[usize],
    b: Option<&[usize]>,
) -> Result<(usize, usize, usize)> {
    match (x, w, b) {
        ([rows, i], [o, wi], None) if i == wi => Ok((*rows, *i, *o)),
        ([rows, i], [o, wi], Some([bo])) if i == wi && o == bo => Ok((*rows, *i, *o)),
        _ => candle_core::bail!("linear: input {x:?}, weight {w:?}, bias {b:?} do not agree"),
    }
}

/// `y = x·Wᵀ (+ b)`, `(rows, out)`.
pub(crate) fn forward(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    dims: (usize, usize, usize),
) -> Vec<f32> {
    forward_with(x, (w, None), bias, dims)
}

/// [`forward`] with `Wᵀ` (`(in, out)`, row-major) given when the caller keeps one, else made
/// here if a block will read it.
pub(crate) fn forward_with(
    x: &[f32],
    (w, transposed): (&[f32], Option<&[f32]>),
    bias: Option<&[f32]>,
    (rows, i, o): (usize, usize, usize),
) -> Vec<f32> {
    if o == 0 {
        return Vec::new();
    }
    // Read in place, `Wᵀ` is gathered element by element (stride `in`) by every block's GEMM:
    // a third of a ViT-B/32 forward. A tiled transpose up front costs one copy of W.
    let made = (transposed.is_none() && reads_copy(rows.min(BLOCK), o)).then(|| transpose(w, o, i));
    let wt = transposed.or(made.as_deref());
    let mut y = Vec::with_capacity(rows * o);
    y.spare_capacity_mut()[..rows * o]
        .par_chunks_mut(BLOCK * o)
        .enumerate()
        .for_each(|(blk, y)| {
            // each block's rows start as the bias (or zeros), written once by its own thread
            for row in y.chunks_mut(o) {
                match bias {
                    Some(bias) => row.iter_mut().zip(bias).for_each(|(d, &b)| {
                        d.write(b);
                    }),
                    None => row.iter_mut().for_each(|d| {
                        d.write(0.0);
                    }),
                }
            }
            // SAFETY: every element of the block was written just above.
            let y = unsafe { &mut *(std::ptr::from_mut(y) as *mut [f32]) };
            let n = y.len() / o;
            let xv = View::rows(blk * BLOCK * i, n, i, i);
            let wv = match wt {
                Some(wt) if reads_copy(n, o) => (wt, View::rows(0, i, o, o)),
                _ => (w, View::rows(0, o, i, i).t()),
            };
            gemm(
                (y, View::rows(0, n, o, o)),
                (x, xv),
                wv,
                1.0,
                bias.is_some(),
            );
        });
    // SAFETY: the blocks above wrote all `rows · o` elements.
    unsafe { y.set_len(rows * o) };
    y
}

/// Whether a block of `n` rows reads the transposed copy of W. `gemm` multiplies one row, or
/// at most 256 outputs, on other paths whose rounding depends on the operands' layout; there
/// the in-place view is kept, so no stored result changes a bit (tested).
pub(crate) fn reads_copy(n: usize, o: usize) -> bool {
    n > 1 && n * o > 256
}

/// Gradients `(dx, dW, db)` for upstream `dy`, each only when `wanted`.
pub(crate) fn backward(
    (x, w, dy): (&[f32], &[f32], &[f32]),
    (rows, i, o): (usize, usize, usize),
    wanted: [bool; 3],
) -> [Option<Vec<f32>>; 3] {
    let dx = wanted[0].then(|| {
        let mut dx = vec![0f32; rows * i];
        if i > 0 {
            dx.par_chunks_mut(BLOCK * i)
                .enumerate()
                .for_each(|(blk, dx)| {
                    let n = dx.len() / i;
                    let dyv = View::rows(blk * BLOCK * o, n, o, o);
                    gemm(
                        (dx, View::rows(0, n, i, i)),
                        (dy, dyv),
                        (w, View::rows(0, o, i, i)),
                        1.0,
                        false,
                    );
                });
        }
        dx
    });
    let dw = wanted[1].then(|| {
        let mut dw = vec![0f32; o * i];
        let (dyv, xv) = (View::rows(0, rows, o, o).t(), View::rows(0, rows, i, i));
        gemm(
            (&mut dw, View::rows(0, o, i, i)),
            (dy, dyv),
            (x, xv),
            1.0,
            false,
        );
        dw
    });
    let db = wanted[2].then(|| {
        let mut db = vec![0f32; o];
        for row in dy.chunks(o.max(1)) {
            db.iter_mut().zip(row).for_each(|(a, &v)| *a += v);
        }
        db
    });
    [dx, dw, db]
}

/// The backward pass shared by both arities: `bias` is `None` for `x·Wᵀ`.
fn bwd_tensors(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    grad: &Tensor,
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let dims = sizes(x.dims(), w.dims(), bias.map(|b| b.dims()))?;
    let grad = grad.contiguous()?;
    let wanted = [
        x.track_op(),
        w.track_op(),
        bias.is_some_and(|b| b.track_op()),
    ];
    let (xt, wt, gt) = (
        TensorSlice::new(x, "linear: input"),
        TensorSlice::new(w, "linear: weight"),
        TensorSlice::new(&grad, "linear: output gradient"),
    );
    let [dx, dw, db] = backward((xt.get()?, wt.get()?, gt.get()?), dims, wanted);
    Ok((
        grad_tensor(dx, x)?,
        grad_tensor(dw, w)?,
        match bias {
            Some(b) => grad_tensor(db, b)?,
            None => None,
        },
    ))
}

impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = sizes(xl.dims(), wl.dims(), None)?;
        let x = storage_slice(xs, xl, "linear: input")?;
        let w = storage_slice(ws, wl, "linear: weight")?;
        Ok((
            CpuStorage::F32(forward(x, w, None, dims)),
            Shape::from((dims.0, dims.2)),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = bwd_tensors(x, w, None, grad)?;
        Ok((dx, dw))
    }
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "linear-bias"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = sizes(xl.dims(), wl.dims(), Some(bl.dims()))?;
        let x = storage_slice(xs, xl, "linear: input")?;
        let w = storage_slice(ws, wl, "linear: weight")?;
        let b = storage_slice(bs, bl, "linear: bias")?;
        Ok((
            CpuStorage::F32(forward(x, w, Some(b), dims)),
            Shape::from((dims.0, dims.2)),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        bwd_tensors(x, w, Some(b), grad)
    }
}

#[cfg(test)]
mod tests {
    use super::{BLOCK, forward};
    use crate::gemm::{View, gemm};
    use crate::linear::linear_2d;
    use crate::rng::SeededRng;
    use crate::test_support::output_and_grads;
    use candle_core::{DType, Device, Result, Tensor, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
    }

    #[test]
    fn matches_candle_matmul_and_broadcast_add_with_and_without_bias() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = SeededRng::new(21);
        // 300 rows: two full blocks and a partial one
        let x = Var::from_tensor(&rng.normal((300, 7), 0.0, 1.0, DType::F32, &dev)?)?;
        let w = Var::from_tensor(&rng.normal((5, 7), 0.0, 0.5, DType::F32, &dev)?)?;
        let b = Var::from_tensor(&rng.normal(5, 0.0, 0.5, DType::F32, &dev)?)?;
        let probe = rng.normal((300, 5), 0.0, 1.0, DType::F32, &dev)?;
        for bias in [None, Some(b.as_tensor())] {
            let fused = linear_2d(&x, &w, bias)?;
            let mut plain = x.matmul(&w.t()?)?;
            if let Some(b) = bias {
                plain = plain.broadcast_add(b)?;
            }
            assert!(max_diff(&fused, &plain)? < 1e-5);
            let g_fused = (fused * &probe)?.sum_all()?.backward()?;
            let g_plain = (plain * &probe)?.sum_all()?.backward()?;
            let mut vars = vec![("x", &x), ("w", &w)];
            if bias.is_some() {
                vars.push(("b", &b));
            }
            for (name, var) in vars {
                let (Some(a), Some(p)) = (g_fused.get(var), g_plain.get(var)) else {
                    panic!("{name}: gradient missing");
                };
                assert!(max_diff(a, p)? < 1e-4, "{name}: gradients differ");
            }
        }
        Ok(())
    }

    #[test]
    fn the_transposed_weight_copy_gives_the_bits_of_reading_w_in_place() {
        // Stored artifacts (the embedded base among them) were made reading Wᵀ as a strided view.
        let values = |n: usize, f: f32| (0..n).map(|k| (k as f32 * f).sin()).collect::<Vec<_>>();
        let mut shapes = Vec::new();
        for rows in [
            1, 2, 16, 17, 20, 24, 31, 32, 33, 48, 64, 65, 100, 128, 129, 300, 4096,
        ] {
            for i in [3, 4, 5, 8, 15, 16, 24, 32, 48, 64, 128, 256, 320] {
                for o in [3, 4, 5, 6, 7, 8, 9, 15, 16, 24, 32, 48, 64, 128, 256, 320] {
                    shapes.push((rows, i, o));
                }
            }
        }
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        for ((rows, i, o), with_bias) in shapes.into_iter().flat_map(|s| [(s, true), (s, false)]) {
            let (x, w, b) = (values(rows * i, 0.37), values(o * i, 0.11), values(o, 0.7));
            let bias = with_bias.then_some(b.as_slice());
            let mut want: Vec<f32> = match bias {
                Some(b) => (0..rows).flat_map(|_| b.iter().copied()).collect(),
                None => vec![0.0; rows * o],
            };
            for (blk, y) in want.chunks_mut(BLOCK * o).enumerate() {
                let n = y.len() / o;
                gemm(
                    (y, View::rows(0, n, o, o)),
                    (&x, View::rows(blk * BLOCK * i, n, i, i)),
                    (&w, View::rows(0, o, i, i).t()),
                    1.0,
                    with_bias,
                );
            }
            let got = forward(&x, &w, bias, (rows, i, o));
            assert_eq!(
                bits(&got),
                bits(&want),
                "{rows}×{i}·{i}×{o}, bias {with_bias}"
            );
        }
    }

    #[test]
    fn a_frozen_weight_gets_no_gradient_and_the_input_still_does() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = SeededRng::new(22);
        let x = Var::from_tensor(&rng.normal((4, 3), 0.0, 1.0, DType::F32, &dev)?)?;
        let frozen = rng.normal((2, 3), 0.0, 1.0, DType::F32, &dev)?;
        let bias = rng.normal(2, 0.0, 1.0, DType::F32, &dev)?;
        let grads = linear_2d(&x, &frozen, Some(&bias))?.sum_all()?.backward()?;
        assert!(grads.get(&frozen).is_none());
        assert!(grads.get(&bias).is_none());
        // d/dx Σ x·Wᵀ = column sums of W, for every row
        let want = frozen.sum(0)?.unsqueeze(0)?.broadcast_as((4, 3))?;
        let Some(dx) = grads.get(&x) else {
            panic!("input gradient missing");
        };
        assert!(max_diff(dx, &want)? < 1e-6);
        Ok(())
    }

    #[test]
    fn results_do_not_depend_on_the_number_of_threads() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = SeededRng::new(23);
        let x = Var::from_tensor(&rng.normal((520, 33), 0.0, 1.0, DType::F32, &dev)?)?;
        let w = Var::from_tensor(&rng.normal((17, 33), 0.0, 1.0, DType::F32, &dev)?)?;
        let b = Var::from_tensor(&rng.normal(17, 0.0, 1.0, DType::F32, &dev)?)?;
        let run = |threads: usize| -> Result<Vec<Vec<f32>>> {
            crate::threads::install(threads, || {
                output_and_grads(&linear_2d(&x, &w, Some(&b))?, &[&x, &w, &b])
            })?
        };
        assert_eq!(run(1)?, run(3)?);
        Ok(())
    }
}
