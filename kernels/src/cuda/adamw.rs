//! Fused AdamW step on the GPU (PyTorch `AdamW` semantics), optional bf16 working-copy write.

use super::launch::{kernel_source, run, Args, Grid, KernelSource};
use super::{device_of, suffix};
use crate::ops::AdamWParams;
use crate::{Result, Tensor};

const SRC: KernelSource = kernel_source!("adamw");

pub fn adamw_step(
    master: &mut Tensor,
    grad: &Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
    p: &AdamWParams,
    working: Option<&mut Tensor>,
) -> Result<()> {
    const OP: &str = "adamw_step";
    let dev = device_of(master, OP)?;
    let n = master.numel();
    // Bias corrections on the host in f64 (step counts from 1).
    let step = p.step.max(1) as f64;
    let bc1 = 1.0 - (p.beta1 as f64).powf(step);
    let bc2 = 1.0 - (p.beta2 as f64).powf(step);
    let step_size = (p.lr as f64 / bc1) as f32;
    let inv_sqrt_bc2 = (1.0 / bc2.sqrt()) as f32;
    let args = Args::new()
        .ptr(master, &dev, OP)?
        .ptr(grad, &dev, OP)?
        .ptr(m, &dev, OP)?
        .ptr(v, &dev, OP)?
        .opt_ptr(working.as_deref(), &dev, OP)?
        .u64(n as u64)
        .f32(p.lr as f32)
        .f32(p.beta1 as f32)
        .f32(p.beta2 as f32)
        .f32(p.eps as f32)
        .f32(p.weight_decay as f32)
        .f32(step_size)
        .f32(inv_sqrt_bc2);
    let func = format!("adamw_step_{}", suffix(grad.dtype(), OP)?);
    run(&dev, &SRC, &[], &func, Grid::cover(n, 256), args)
}
