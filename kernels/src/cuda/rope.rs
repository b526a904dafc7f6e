//! Rotary embedding on the GPU (HF `rotate_half`), one thread per rotated pair (8 per thread when
//! D/2 % 8 == 0).

use super::launch::{kernel_source, run, Args, Grid, KernelSource};
use super::{device_of, empty, suffix};
use crate::{Error, Result, Tensor};

const SRC: KernelSource = kernel_source!("rope");

fn u32_dim(op: &'static str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::msg(format!("{op}: dimension {v} exceeds u32")))
}

/// Rotates x by `sign`·a into a new tensor.
fn rotate(op: &'static str, x: &Tensor, pos: &Tensor, theta: f32, sign: f32) -> Result<Tensor> {
    let dev = device_of(x, op)?;
    let (n, h, d) = x.dims3(op)?;
    let y = empty(&dev, &[n, h, d], x.dtype())?;
    let args = Args::new()
        .ptr(x, &dev, op)?
        .ptr(pos, &dev, op)?
        .ptr(&y, &dev, op)?
        .u32(u32_dim(op, n)?)
        .u32(u32_dim(op, h)?)
        .u32(u32_dim(op, d)?)
        .f32(theta)
        .f32(sign);
    let func = format!("rope_{}", suffix(x.dtype(), op)?);
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
    rotate("rope", x, pos, theta, 1.0)
}

pub fn rope_backward(dy: &Tensor, pos: &Tensor, theta: f32) -> Result<Tensor> {
    rotate("rope_backward", dy, pos, theta, -1.0)
}
