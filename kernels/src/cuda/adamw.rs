//! Fused AdamW step on the GPU (PyTorch `AdamW` semantics), optional bf16 working-copy write.

use super::device_of;
use super::launch::{kernel_source, run, Args, Grid, KernelSource};
use crate::ops::AdamWScalars;
use crate::{Result, Tensor};

const SRC: KernelSource = kernel_source!("adamw");

pub fn adamw_step(
    master: &mut Tensor,
    grad: &Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
    s: &AdamWScalars,
    working: Option<&mut Tensor>,
) -> Result<()> {
    const OP: &str = "adamw_step";
    let dev = device_of(master, OP)?;
    let n = master.numel();
    let args = Args::new()
        .ptr(master, &dev, OP)?
        .ptr(grad, &dev, OP)?
        .ptr(m, &dev, OP)?
        .ptr(v, &dev, OP)?
        .opt_ptr(working.as_deref(), &dev, OP)?
        .u64(n as u64)
        .f32(s.decay)
        .f32(s.one_minus_beta1)
        .f32(s.beta2)
        .f32(s.one_minus_beta2)
        .f32(s.neg_step_size)
        .f32(s.bias_correction2_sqrt)
        .f32(s.eps);
    run(&dev, &SRC, &[], "adamw_step_f32", Grid::cover(n, 256), args)
}
