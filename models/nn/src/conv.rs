//! 2-D convolution initialised as PyTorch's `nn.Conv2d`.
//!
//! Weight `(out, in, k, k)` and bias `(out,)` drawn from U(−1/√fan_in, 1/√fan_in) when created,
//! where fan_in = in·k². On the CPU in f32 the forward is im2col + GEMM with its own backward
//! ([`crate::im2col`], ~several times faster than candle's direct kernels in training); other
//! devices and dtypes use candle's `conv2d` (cuDNN/CUDA kernels under `--features cuda`).

use candle_core::{Module, Result, Tensor};

use crate::GroupNorm;
use candle_nn::{Init, VarBuilder};

/// `nn.Conv2d(in, out, kernel, stride, padding)` with square kernels and symmetric padding.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    padding: usize,
}

/// Geometry of a [`Conv2d`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dSpec {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Kernel height and width.
    pub kernel: usize,
    /// Stride in both directions.
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
}

impl Conv2dSpec {
    /// A stride-1 convolution padded to keep the spatial size (`padding = kernel / 2`).
    pub fn same(in_channels: usize, out_channels: usize, kernel: usize) -> Self {
        Self {
            in_channels,
            out_channels,
            kernel,
            stride: 1,
            padding: kernel / 2,
        }
    }
}

impl Conv2d {
    /// Loads or creates `weight` and `bias`.
    pub fn new(spec: Conv2dSpec, vb: VarBuilder) -> Result<Self> {
        let fan_in = spec.in_channels * spec.kernel * spec.kernel;
        let bound = 1.0 / (fan_in as f64).sqrt();
        let init = Init::Uniform {
            lo: -bound,
            up: bound,
        };
        let shape = (
            spec.out_channels,
            spec.in_channels,
            spec.kernel,
            spec.kernel,
        );
        let weight = vb.get_with_hints(shape, "weight", init)?;
        let bias = vb.get_with_hints(spec.out_channels, "bias", init)?;
        Ok(Self {
            weight,
            bias,
            stride: spec.stride,
            padding: spec.padding,
        })
    }

    /// The kernel `(out, in, k, k)`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

impl Conv2d {
    /// `conv(xs) + shift` for a per-image, per-channel `shift: (b, out)` (a ResNet block's time
    /// embedding), added through the bias so that no full-size sum is recorded for backward.
    pub fn forward_shifted(&self, xs: &Tensor, shift: &Tensor) -> Result<Tensor> {
        let bias = shift.broadcast_add(&self.bias.unsqueeze(0)?)?;
        self.forward_with_bias(xs, &bias)
    }

    /// `conv(silu(norm(xs))) (+ shift)`, the norm–SiLU–conv of a ResNet block; on the CPU in
    /// f32 one fused op that never stores the normalised activation
    /// ([`crate::im2col::norm_act_conv2d_im2col`]). `shift: (b, out)` as in
    /// [`Conv2d::forward_shifted`].
    pub fn forward_after_norm_silu(
        &self,
        norm: &GroupNorm,
        xs: &Tensor,
        shift: Option<&Tensor>,
    ) -> Result<Tensor> {
        if !crate::fast_path::applies(&[xs]) {
            let hs = norm.forward_silu(xs)?;
            return match shift {
                Some(shift) => self.forward_shifted(&hs, shift),
                None => self.forward(&hs),
            };
        }
        let bias = match shift {
            Some(shift) => shift.broadcast_add(&self.bias.unsqueeze(0)?)?,
            None => self.bias.clone(),
        };
        let (op, gamma, beta) = norm.fused_parts(true);
        crate::im2col::norm_act_conv2d_im2col(
            xs,
            (op, gamma, beta),
            (&self.weight, &bias),
            self.stride,
            self.padding,
        )
    }

    /// The convolution with `bias` of shape `(out,)` or `(b, out)`.
    fn forward_with_bias(&self, xs: &Tensor, bias: &Tensor) -> Result<Tensor> {
        if crate::fast_path::applies(&[xs]) {
            return crate::im2col::conv2d_im2col(xs, &self.weight, bias, self.stride, self.padding);
        }
        let ys = xs.conv2d(&self.weight, self.padding, self.stride, 1, 1)?;
        let bias = match bias.rank() {
            1 => bias.unsqueeze(0)?,
            _ => bias.clone(),
        };
        ys.broadcast_add(&bias.unsqueeze(2)?.unsqueeze(3)?)
    }
}

impl Module for Conv2d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_with_bias(xs, &self.bias)
    }
}
