//! Elementwise helpers on the GPU: add, add in place, scale in place, fill in place.

use super::launch::{kernel_source, run, Args, Grid, KernelSource};
use super::{device_of, empty, suffix};
use crate::{Result, Tensor};

const SRC: KernelSource = kernel_source!("elementwise");

pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    const OP: &str = "add";
    let dev = device_of(a, OP)?;
    let out = empty(&dev, a.shape(), a.dtype())?;
    let n = a.numel();
    let args = Args::new()
        .ptr(a, &dev, OP)?
        .ptr(b, &dev, OP)?
        .ptr(&out, &dev, OP)?
        .u64(n as u64);
    let func = format!("add_{}", suffix(a.dtype(), OP)?);
    run(
        &dev,
        &SRC,
        &[],
        &func,
        Grid::cover(n.div_ceil(8), 256),
        args,
    )?;
    Ok(out)
}

pub fn add_inplace(a: &mut Tensor, b: &Tensor) -> Result<()> {
    const OP: &str = "add_inplace";
    let dev = device_of(a, OP)?;
    let n = a.numel();
    let args = Args::new()
        .ptr(a, &dev, OP)?
        .ptr(b, &dev, OP)?
        .u64(n as u64);
    let func = format!("add_inplace_{}", suffix(a.dtype(), OP)?);
    run(
        &dev,
        &SRC,
        &[],
        &func,
        Grid::cover(n.div_ceil(8), 256),
        args,
    )
}

pub fn scale_inplace(x: &mut Tensor, s: f32) -> Result<()> {
    const OP: &str = "scale_inplace";
    let dev = device_of(x, OP)?;
    let n = x.numel();
    let args = Args::new().ptr(x, &dev, OP)?.f32(s).u64(n as u64);
    let func = format!("scale_inplace_{}", suffix(x.dtype(), OP)?);
    run(
        &dev,
        &SRC,
        &[],
        &func,
        Grid::cover(n.div_ceil(8), 256),
        args,
    )
}

pub fn fill_inplace(x: &mut Tensor, v: f32) -> Result<()> {
    const OP: &str = "fill_inplace";
    let dev = device_of(x, OP)?;
    let n = x.numel();
    let args = Args::new().ptr(x, &dev, OP)?.f32(v).u64(n as u64);
    let func = format!("fill_inplace_{}", suffix(x.dtype(), OP)?);
    run(
        &dev,
        &SRC,
        &[],
        &func,
        Grid::cover(n.div_ceil(8), 256),
        args,
    )
}
