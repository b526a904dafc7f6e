//! Rotary embedding on the GPU (HF `rotate_half`), one thread per rotated pair (8 per thread when
//! D/2 % 8 == 0); `rope_bias` adds a bias to an f32 input first and rounds once.

use super::launch::{kernel_source, run, Args, Grid, KernelSource};
use super::{device_of, empty, suffix};
use crate::{DType, Error, Result, Tensor};

const SRC: KernelSource = kernel_source!("rope");

fn u32_dim(op: &'static str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::msg(format!("{op}: dimension {v} exceeds u32")))
}

/// Rotates x (plus `bias` when given, then x is f32) by `sign`·a into a new tensor of `dtype`.
fn rotate(
    op: &'static str,
    x: &Tensor,
    bias: Option<&Tensor>,
    pos: &Tensor,
    theta: f32,
    sign: f32,
    dtype: DType,
) -> Result<Tensor> {
    let dev = device_of(x, op)?;
    let (n, h, d) = x.dims3(op)?;
    let y = empty(&dev, &[n, h, d], dtype)?;
    let mut args = Args::new().ptr(x, &dev, op)?;
    if let Some(b) = bias {
        args = args.ptr(b, &dev, op)?;
    }
    let args = args
        .ptr(pos, &dev, op)?
        .ptr(&y, &dev, op)?
        .u32(u32_dim(op, n)?)
        .u32(u32_dim(op, h)?)
        .u32(u32_dim(op, d)?)
        .f32(theta);
    let (func, args) = match bias {
        // rope_bias_f32_<out>: always the forward rotation.
        Some(_) => (format!("rope_bias_f32_{}", suffix(dtype, op)?), args),
        None => (format!("rope_{}", suffix(x.dtype(), op)?), args.f32(sign)),
    };
    // One block per TPB = 8 tokens (grid-stride), threads over tokens × heads × D/2; the
    // tokens' cos/sin tables in smem.
    const TPB: usize = 8;
    let threads = (TPB * h * d / 2).next_multiple_of(32).clamp(32, 256) as u32;
    let g = Grid::d1(n.div_ceil(TPB).clamp(1, 65535 * 4) as u32, threads)
        .with_smem((TPB * d * 4) as u32);
    run(&dev, &SRC, &[], &func, g, args)?;
    Ok(y)
}

pub fn rope(x: &Tensor, pos: &Tensor, theta: f32) -> Result<Tensor> {
    rotate("rope", x, None, pos, theta, 1.0, x.dtype())
}

pub fn rope_bias(x: &Tensor, b: &Tensor, pos: &Tensor, theta: f32, dtype: DType) -> Result<Tensor> {
    rotate("rope_bias", x, Some(b), pos, theta, 1.0, dtype)
}

pub fn rope_backward(dy: &Tensor, pos: &Tensor, theta: f32) -> Result<Tensor> {
    rotate("rope_backward", dy, None, pos, theta, -1.0, dy.dtype())
}
