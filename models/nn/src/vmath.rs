//! f32 row kernels written so that LLVM vectorises them: an `exp` without a libm call, and
//! sums, maxima and dot products over eight independent lanes.
//!
//! The attention softmax spent most of its time in scalar `expf` calls and in reductions that
//! cannot vectorise because float addition is not associative. Here `exp` is a Cephes-style
//! range reduction and degree-6 polynomial (relative error below 2·10⁻⁷, flushing to 0 below
//! −87.3), and reductions keep eight partial results, combined in a fixed order. On x86-64 with
//! AVX2 the same code is compiled a second time for 256-bit vectors and chosen at run time; the
//! arithmetic is identical (no fused multiply-adds are formed), so results do not depend on
//! which copy runs.

const LANES: usize = 8;

/// `e^x` for f32, vectorisable; 0 below −87.3, saturating at `f32::MAX` near 88.7.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // adding and subtracting 1.5·2²³ rounds to the nearest integer without a libm call
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(-87.3, 88.7);
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    // n as an integer, read from t's low mantissa bits: a float-to-int conversion would not
    // vectorise (Rust's saturating `as` becomes a scalar conversion per lane)
    let ni = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    let scale = f32::from_bits(((ni + 127) as u32) << 23);
    if x < -87.3 { 0.0 } else { y * scale }
}

/// Defines `fn $name` whose body is compiled twice, generically and for AVX2, and picks the
/// AVX2 copy at run time when the CPU has it. Bodies call `#[inline(always)]` helpers (such as
/// [`exp`]) so that those vectorise too.
macro_rules! simd_fn {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn generic($($arg: $ty),*) $(-> $ret)? $body

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2")]
            fn avx2($($arg: $ty),*) $(-> $ret)? {
                generic($($arg),*)
            }

            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2, the only feature the copy was compiled for.
                return unsafe { avx2($($arg),*) };
            }
            generic($($arg),*)
        }
    };
}
pub(crate) use simd_fn;

/// Σ of `xs`, over eight lanes.
#[inline(always)]
pub(crate) fn lane_sum(xs: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (s, &v) in lanes.iter_mut().zip(chunk) {
            *s += v;
        }
    }
    lanes.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

/// Σ xᵢ·yᵢ over the common length, over eight lanes.
#[inline(always)]
pub(crate) fn lane_dot(xs: &[f32], ys: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let (mut a, mut b) = (xs.chunks_exact(LANES), ys.chunks_exact(LANES));
    for (x, y) in (&mut a).zip(&mut b) {
        for ((s, &x), &y) in lanes.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
    let tail: f32 = a
        .remainder()
        .iter()
        .zip(b.remainder())
        .map(|(x, y)| x * y)
        .sum();
    lanes.iter().sum::<f32>() + tail
}

/// max of `xs` (−∞ when empty), over eight lanes.
#[inline(always)]
fn lane_max(xs: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (m, &v) in lanes.iter_mut().zip(chunk) {
            *m = if v > *m { v } else { *m };
        }
    }
    chunks
        .remainder()
        .iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

/// Mean and 1/√(variance + eps) of `xs` (biased variance), accumulated in f64 over four lanes.
#[inline(always)]
pub(crate) fn mean_rstd_generic(xs: &[f32], eps: f64) -> (f64, f64) {
    const F64_LANES: usize = 4;
    let n = xs.len().max(1) as f64;
    let lanes_sum = |f: &dyn Fn(f32) -> f64| {
        let mut lanes = [0f64; F64_LANES];
        let mut chunks = xs.chunks_exact(F64_LANES);
        for chunk in &mut chunks {
            for (s, &v) in lanes.iter_mut().zip(chunk) {
                *s += f(v);
            }
        }
        lanes.iter().sum::<f64>() + chunks.remainder().iter().map(|&v| f(v)).sum::<f64>()
    };
    let mean = lanes_sum(&|v| v as f64) / n;
    let var = lanes_sum(&|v| (v as f64 - mean) * (v as f64 - mean)) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

simd_fn! {
    /// `(a, b)` with `x̂ = x·a + b = (x − μ)/σ` for the values `xs`, statistics in f64.
    pub(crate) fn normaliser(xs: &[f32], eps: f64) -> (f32, f32) {
        let (mean, rstd) = mean_rstd_generic(xs, eps);
        (rstd as f32, (-mean * rstd) as f32)
    }
}

/// `1/(1 + e^−z)`, vectorisable.
#[inline(always)]
pub(crate) fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + exp(-z))
}

/// erf(x) for f32, vectorisable: its Taylor series below |x| = 0.5 (relative error below
/// 10⁻⁶), Abramowitz & Stegun 7.1.26 above (absolute error below 4·10⁻⁷).
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    let ax = x.abs();
    // 2/√π·(x − x³/3 + x⁵/10 − x⁷/42 + x⁹/216 − x¹¹/1320)
    let x2 = x * x;
    let series = x
        * (std::f32::consts::FRAC_2_SQRT_PI
            + x2 * (-0.376_126_4
                + x2 * (0.112_837_92
                    + x2 * (-0.026_866_17 + x2 * (0.005_223_84 + x2 * -0.000_854_81)))));
    let t = 1.0 / (1.0 + 0.327_591_1 * ax);
    let poly = ((((1.061_405_4 * t - 1.453_152_1) * t + 1.421_413_8) * t - 0.284_496_74) * t
        + 0.254_829_6)
        * t;
    let tail = 1.0 - poly * exp(-x2);
    if ax < 0.5 {
        series
    } else if x < 0.0 {
        -tail
    } else {
        tail
    }
}

simd_fn! {
    /// `row ← exp(row − max)/Σ exp(row − max)` in place.
    pub fn softmax_row(row: &mut [f32]) {
        let max = lane_max(row);
        for v in row.iter_mut() {
            *v = exp(*v - max);
        }
        let inv = 1.0 / lane_sum(row);
        for v in row.iter_mut() {
            *v *= inv;
        }
    }
}

simd_fn! {
    /// The softmax's backward for one row, in place: `dp ← p∘(dp − Σ dp∘p)·scale`.
    pub fn softmax_backward_row(dp: &mut [f32], p: &[f32], scale: f32) {
        let dot = lane_dot(dp, p);
        for (g, &pv) in dp.iter_mut().zip(p) {
            *g = pv * (*g - dot) * scale;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_std_and_flushes_below_the_range() {
        let mut worst = 0f32;
        for i in -870_000..=880_000 {
            let x = i as f32 * 1e-4;
            let (got, want) = (exp(x), x.exp());
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 2.5e-7, "relative error {worst}");
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(0.0) == 1.0);
    }

    #[test]
    fn erf_is_close_to_libm_absolutely_and_near_zero_relatively() {
        let libm = candle_core::cpu::erf::erf_f32;
        let worst = (-60_000..=60_000)
            .map(|i| i as f32 * 1e-4)
            .map(|x| (erf(x) - libm(x)).abs())
            .fold(0f32, f32::max);
        assert!(worst < 4e-7, "absolute error {worst}");
        let worst_rel = (1..5_000)
            .map(|i| i as f32 * 1e-4)
            .map(|x| ((erf(x) - libm(x)) / libm(x)).abs())
            .fold(0f32, f32::max);
        assert!(worst_rel < 1e-6, "relative error {worst_rel} below 0.5");
        assert_eq!(erf(0.0), 0.0);
        assert_eq!(erf(10.0), 1.0);
        assert_eq!(erf(-10.0), -1.0);
    }

    #[test]
    fn softmax_row_matches_the_definition_for_any_length() {
        for len in [1usize, 3, 8, 13, 64] {
            let mut row: Vec<f32> = (0..len)
                .map(|i| ((i * 7) % 11) as f32 * 0.9 - 4.0)
                .collect();
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let total: f64 = row.iter().map(|&v| ((v - max) as f64).exp()).sum();
            let want: Vec<f64> = row
                .iter()
                .map(|&v| ((v - max) as f64).exp() / total)
                .collect();
            softmax_row(&mut row);
            for (g, w) in row.iter().zip(&want) {
                assert!((*g as f64 - w).abs() < 1e-6, "len {len}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn softmax_backward_row_matches_the_definition() {
        let p = [0.1f32, 0.2, 0.3, 0.05, 0.05, 0.1, 0.1, 0.05, 0.05];
        let dy: Vec<f32> = (0..9).map(|i| i as f32 * 0.3 - 1.0).collect();
        let dot: f32 = dy.iter().zip(&p).map(|(a, b)| a * b).sum();
        let mut got = dy.clone();
        softmax_backward_row(&mut got, &p, 0.5);
        for i in 0..9 {
            assert!((got[i] - p[i] * (dy[i] - dot) * 0.5).abs() < 1e-6);
        }
    }
}
