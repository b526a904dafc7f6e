//! SwiGLU of packed [gate | up] rows on the GPU (`cu/swiglu_packed.cu`).

use super::launch::{kernel_source, run, Args, Grid, KernelSource};
use super::{device_of, empty, suffix};
use crate::{Error, Result, Tensor};

const SRC: KernelSource = kernel_source!("swiglu_packed");

fn u32_dim(op: &'static str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::msg(format!("{op}: dimension {v} exceeds u32")))
}

pub fn swiglu_packed(gu: &Tensor) -> Result<Tensor> {
    const OP: &str = "swiglu_packed";
    let dev = device_of(gu, OP)?;
    let (n, f2) = gu.dims2(OP)?;
    let f = f2 / 2;
    let h = empty(&dev, &[n, f], gu.dtype())?;
    let args = Args::new()
        .ptr(gu, &dev, OP)?
        .ptr(&h, &dev, OP)?
        .u32(u32_dim(OP, n)?)
        .u32(u32_dim(OP, f)?);
    let func = format!("swiglu_packed_{}", suffix(gu.dtype(), OP)?);
    let per_thread = if f.is_multiple_of(8) { 8 } else { 1 };
    run(
        &dev,
        &SRC,
        &[],
        &func,
        Grid::cover((n * f).div_ceil(per_thread), 256),
        args,
    )?;
    Ok(h)
}
