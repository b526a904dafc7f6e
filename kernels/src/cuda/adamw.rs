//! Fused AdamW step on the GPU (PyTorch `AdamW` semantics), optional bf16 working-copy write; one
//! parameter per launch, or many parameters in one launch.

use super::launch::{kernel_source, run, Args, Grid, KernelSource};
use super::sum_squares::DeviceClip;
use super::{cuda_err, device_of, ptr};
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

/// Elements per block of `adamw_step_many` (ADAMW_BLOCK_ELEMS in cu/adamw.cu).
const BLOCK_ELEMS: usize = 8192;

/// How `adamw_step_many` scales the gradients: by a host factor, or by the clip decision a
/// [`DeviceClip`] holds on the device (which may also skip the update).
pub enum GradScale<'a> {
    Host(f32),
    Device(&'a DeviceClip),
}

/// AdamW over many parameters of one GPU in one launch: a table of one 64-byte slot per
/// parameter (its buffers, length, first block, decay factor) goes to the device, and each block
/// finds its parameter there. `scalars[i].decay` is parameter i's; the other scalars are shared
/// (the first entry's are used).
pub fn adamw_step_many(
    items: &mut [crate::ops::AdamWItem],
    scalars: &[AdamWScalars],
    scale: GradScale,
) -> Result<()> {
    const OP: &str = "adamw_step_many";
    let Some(first) = items.first() else {
        return Ok(());
    };
    let dev = device_of(first.master, OP)?;
    let mut table: Vec<u64> = Vec::with_capacity(items.len() * 8);
    let mut blocks = 0usize;
    for (it, s) in items.iter().zip(scalars) {
        let n = it.master.numel();
        if n == 0 {
            continue;
        }
        table.extend([
            ptr(it.master, &dev, OP)?,
            ptr(it.grad, &dev, OP)?,
            ptr(it.m, &dev, OP)?,
            ptr(it.v, &dev, OP)?,
            match it.working.as_deref() {
                Some(w) => ptr(w, &dev, OP)?,
                None => 0,
            },
            n as u64,
            blocks as u64,
            s.decay.to_bits() as u64,
        ]);
        blocks += n.div_ceil(BLOCK_ELEMS);
    }
    if blocks == 0 {
        return Ok(());
    }
    let slots = table.len() / 8;
    let grid_x = u32::try_from(blocks)
        .map_err(|_| crate::Error::msg(format!("{OP}: {blocks} blocks exceed u32")))?;
    let stream = dev.stream();
    let table = stream.clone_htod(&table).map_err(cuda_err)?;
    let table_ptr = {
        use cudarc::driver::DevicePtr;
        table.device_ptr(stream).0
    };
    let s = &scalars[0];
    let (grad_scale, clip_ptr) = match scale {
        GradScale::Host(f) => (f, 0),
        GradScale::Device(c) => (1.0, c.device_ptr()),
    };
    let args = Args::new()
        .raw(table_ptr)
        .u32(slots as u32)
        .f32(grad_scale)
        .raw(clip_ptr)
        .f32(s.one_minus_beta1)
        .f32(s.beta2)
        .f32(s.one_minus_beta2)
        .f32(s.neg_step_size)
        .f32(s.bias_correction2_sqrt)
        .f32(s.eps);
    // The table is freed (stream-ordered) when `table` drops, after the kernel has read it.
    run(
        &dev,
        &SRC,
        &[],
        "adamw_step_many",
        Grid::d1(grid_x, 256),
        args,
    )
}
