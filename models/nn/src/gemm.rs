//! A bounds-checked f32 GEMM over strided views of plain slices, for CPU kernels that multiply
//! sub-matrices in place (one attention head inside `(b, n, heads·d)` projections) instead of
//! materialising them as tensors. It calls the `gemm` crate that candle's own CPU matmul uses,
//! single-threaded: the kernels that call it parallelise over independent products themselves.

use rayon::prelude::*;

/// A matrix inside a slice: element `(r, c)` is at `offset + r·row_stride + c·col_stride`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    /// Index of element `(0, 0)`.
    pub offset: usize,
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// Distance between consecutive rows.
    pub row_stride: usize,
    /// Distance between consecutive columns.
    pub col_stride: usize,
}

impl View {
    /// A row-major `rows × cols` block whose rows are `row_stride` apart.
    pub fn rows(offset: usize, rows: usize, cols: usize, row_stride: usize) -> Self {
        Self {
            offset,
            rows,
            cols,
            row_stride,
            col_stride: 1,
        }
    }

    /// The same elements read as the transposed matrix.
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// One past the largest index the view touches (its `offset` when empty).
    fn end(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            return self.offset;
        }
        self.offset + (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride + 1
    }
}

/// `dst ← scale·a·b`, or `dst ← dst + scale·a·b` when `accumulate`.
///
/// # Panics
/// When the shapes do not chain or a view reaches past its slice (a bug in the caller, never
/// user input: callers derive views from tensor shapes they have checked).
pub fn gemm(
    (dst, d): (&mut [f32], View),
    (a, av): (&[f32], View),
    (b, bv): (&[f32], View),
    scale: f32,
    accumulate: bool,
) {
    assert!(
        av.rows == d.rows && bv.cols == d.cols && av.cols == bv.rows,
        "gemm: ({}×{})·({}×{}) into {}×{}",
        av.rows,
        av.cols,
        bv.rows,
        bv.cols,
        d.rows,
        d.cols
    );
    assert!(
        d.end() <= dst.len() && av.end() <= a.len() && bv.end() <= b.len(),
        "gemm: view out of bounds"
    );
    if d.rows == 0 || d.cols == 0 {
        return;
    }
    if av.cols == 0 {
        if !accumulate {
            for r in 0..d.rows {
                for c in 0..d.cols {
                    dst[d.offset + r * d.row_stride + c * d.col_stride] = 0.0;
                }
            }
        }
        return;
    }
    // SAFETY: the asserts above keep every index the product reads or writes inside its slice,
    // `dst` is borrowed mutably and so aliases neither input, and strides fit in isize because
    // they index slices that exist.
    unsafe {
        gemm::gemm(
            d.rows,
            d.cols,
            av.cols,
            dst.as_mut_ptr().add(d.offset),
            d.col_stride as isize,
            d.row_stride as isize,
            accumulate,
            a.as_ptr().add(av.offset),
            av.col_stride as isize,
            av.row_stride as isize,
            b.as_ptr().add(bv.offset),
            bv.col_stride as isize,
            bv.row_stride as isize,
            1.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// The `cols × rows` transpose of a row-major `rows × cols` matrix, split over the calling
/// pool's threads by output rows.
pub(crate) fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    assert_eq!(
        m.len(),
        rows * cols,
        "transpose: {rows}×{cols} from {}",
        m.len()
    );
    let mut t = vec![0f32; m.len()];
    if rows > 0 {
        t.par_chunks_mut(TILE * rows)
            .enumerate()
            .for_each(|(k, t)| transpose_columns(m, t, rows, cols, k * TILE));
    }
    t
}

const TILE: usize = 8;

crate::vmath::simd_fn! {
    /// Writes columns `c0..` of `m` (`rows × cols`) as the rows of `t`, in 8×8 tiles: eight
    /// rows read into registers, eight columns written out, so both sides move whole vectors.
    fn transpose_columns(m: &[f32], t: &mut [f32], rows: usize, cols: usize, c0: usize) {
        let width = t.len() / rows;
        let full_r = rows / TILE * TILE;
        if width == TILE {
            for r0 in (0..full_r).step_by(TILE) {
                let mut tile = [[0f32; TILE]; TILE];
                for (k, row) in tile.iter_mut().enumerate() {
                    let at = (r0 + k) * cols + c0;
                    row.copy_from_slice(&m[at..at + TILE]);
                }
                for (c, column) in t.chunks_exact_mut(rows).enumerate() {
                    for (k, v) in column[r0..r0 + TILE].iter_mut().enumerate() {
                        *v = tile[k][c];
                    }
                }
            }
        }
        let from = if width == TILE { full_r } else { 0 };
        for (c, column) in t.chunks_exact_mut(rows).enumerate() {
            for r in from..rows {
                column[r] = m[r * cols + c0 + c];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], av: View, b: &[f32], bv: View) -> Vec<f32> {
        let mut out = vec![0.0; av.rows * bv.cols];
        for r in 0..av.rows {
            for c in 0..bv.cols {
                out[r * bv.cols + c] = (0..av.cols)
                    .map(|k| {
                        a[av.offset + r * av.row_stride + k * av.col_stride]
                            * b[bv.offset + k * bv.row_stride + c * bv.col_stride]
                    })
                    .sum();
            }
        }
        out
    }

    #[test]
    fn strided_and_transposed_views_multiply_like_the_naive_product() {
        // a: the second 3×4 head of a (3, 2·4) row-major buffer; b: a 5×4 block read transposed.
        let a: Vec<f32> = (0..24).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..25).map(|i| (i as f32 * 0.11).cos()).collect();
        let av = View::rows(4, 3, 4, 8);
        let bv = View::rows(0, 5, 4, 5).t(); // a 5×4 block read as 4×5
        let want = naive(&a, av, &b, bv);
        // Written into the second 3×5 block of a (3, 2·5) buffer, leaving the first untouched.
        let mut dst = vec![7.0f32; 30];
        let d = View::rows(5, 3, 5, 10);
        gemm((&mut dst, d), (&a, av), (&b, bv), 2.0, false);
        for r in 0..3 {
            for c in 0..5 {
                assert!((dst[r * 10 + 5 + c] - 2.0 * want[r * 5 + c]).abs() < 1e-5);
                assert_eq!(dst[r * 10 + c], 7.0);
            }
        }
        gemm((&mut dst, d), (&a, av), (&b, bv), -1.0, true);
        for r in 0..3 {
            for c in 0..5 {
                assert!((dst[r * 10 + 5 + c] - want[r * 5 + c]).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn transpose_moves_every_element_including_the_ragged_edges() {
        for (rows, cols) in [(1, 1), (3, 5), (8, 8), (16, 24), (17, 9), (30, 41), (64, 7)] {
            let m: Vec<f32> = (0..rows * cols).map(|k| k as f32).collect();
            let t = transpose(&m, rows, cols);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(
                        t[c * rows + r],
                        m[r * cols + c],
                        "{rows}×{cols} at ({r}, {c})"
                    );
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn a_view_past_its_slice_panics_instead_of_reading_it() {
        let a = vec![0.0f32; 6];
        let mut dst = vec![0.0f32; 4];
        let d = View::rows(0, 2, 2, 2);
        gemm(
            (&mut dst, d),
            (&a, View::rows(1, 2, 3, 3)),
            (&a, View::rows(0, 3, 2, 2)),
            1.0,
            false,
        );
    }
}
