//! SwiGLU on the GPU: elementwise silu(gate) * up and its backward.

use super::launch::{kernel_source, run, Args, Grid, KernelSource};
use super::{device_of, empty, suffix};
use crate::{Result, Tensor};

const SRC: KernelSource = kernel_source!("swiglu");

pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    const OP: &str = "swiglu";
    let dev = device_of(gate, OP)?;
    let h = empty(&dev, gate.shape(), gate.dtype())?;
    let n = gate.numel();
    let args = Args::new()
        .ptr(gate, &dev, OP)?
        .ptr(up, &dev, OP)?
        .ptr(&h, &dev, OP)?
        .u64(n as u64);
    let func = format!("swiglu_{}", suffix(gate.dtype(), OP)?);
    run(
        &dev,
        &SRC,
        &[],
        &func,
        Grid::cover(n.div_ceil(8), 256),
        args,
    )?;
    Ok(h)
}

pub fn swiglu_backward(dh: &Tensor, gate: &Tensor, up: &Tensor) -> Result<(Tensor, Tensor)> {
    const OP: &str = "swiglu_backward";
    let dev = device_of(gate, OP)?;
    let dgate = empty(&dev, gate.shape(), gate.dtype())?;
    let dup = empty(&dev, gate.shape(), gate.dtype())?;
    let n = gate.numel();
    let args = Args::new()
        .ptr(dh, &dev, OP)?
        .ptr(gate, &dev, OP)?
        .ptr(up, &dev, OP)?
        .ptr(&dgate, &dev, OP)?
        .ptr(&dup, &dev, OP)?
        .u64(n as u64);
    let func = format!("swiglu_backward_{}", suffix(gate.dtype(), OP)?);
    run(
        &dev,
        &SRC,
        &[],
        &func,
        Grid::cover(n.div_ceil(8), 256),
        args,
    )?;
    Ok((dgate, dup))
}
