//! RMSNorm on the GPU: one block per row forward; the backward keeps per-block dw partials in
//! shared memory and adds them with one f32 atomic per column per block.

use super::launch::{kernel_source, run, Args, Grid, KernelSource};
use super::{device_of, empty, suffix, zeros};
use crate::{DType, Error, Result, Tensor};

const SRC: KernelSource = kernel_source!("rmsnorm");

fn u32_dim(op: &'static str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::msg(format!("{op}: dimension {v} exceeds u32")))
}

/// Threads per row: enough to cover C in a few strides, a multiple of 32.
fn threads_for(c: usize) -> u32 {
    (c.div_ceil(4).next_multiple_of(32)).clamp(32, 512) as u32
}

pub fn rmsnorm(x: &Tensor, w: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
    const OP: &str = "rmsnorm";
    let dev = device_of(x, OP)?;
    let (n, c) = x.dims2(OP)?;
    let y = empty(&dev, &[n, c], x.dtype())?;
    let rstd = empty(&dev, &[n], DType::F32)?;
    let args = Args::new()
        .ptr(x, &dev, OP)?
        .ptr(w, &dev, OP)?
        .ptr(&y, &dev, OP)?
        .ptr(&rstd, &dev, OP)?
        .u32(u32_dim(OP, n)?)
        .u32(u32_dim(OP, c)?)
        .f32(eps);
    let sfx = suffix(x.dtype(), OP)?;
    if c.is_multiple_of(8) {
        // A warp per row, 8 rows per block.
        let func = format!("rmsnorm_warp_{sfx}");
        let g = Grid::d1(n.div_ceil(8).clamp(1, 65535 * 4) as u32, 256);
        run(&dev, &SRC, &[], &func, g, args)?;
    } else {
        let func = format!("rmsnorm_{sfx}");
        let g = Grid::d1(n.clamp(1, 65535 * 4) as u32, threads_for(c));
        run(&dev, &SRC, &[], &func, g, args)?;
    }
    Ok((y, rstd))
}

pub fn rmsnorm_backward(
    dy: &Tensor,
    x: &Tensor,
    w: &Tensor,
    rstd: &Tensor,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "rmsnorm_backward";
    let dev = device_of(x, OP)?;
    let (n, c) = x.dims2(OP)?;
    let mut dx = empty(&dev, &[n, c], x.dtype())?;
    let mut dw = zeros(&dev, &[c], DType::F32)?;
    launch_backward(OP, dy, x, w, rstd, &mut dx, &mut dw, Acc::No)?;
    Ok((dx, dw))
}

/// [`rmsnorm_backward`] adding dx into `d_res` and dw into `dw` (both in place).
pub fn rmsnorm_backward_acc(
    dy: &Tensor,
    x: &Tensor,
    w: &Tensor,
    rstd: &Tensor,
    d_res: &mut Tensor,
    dw: &mut Tensor,
) -> Result<()> {
    launch_backward(
        "rmsnorm_backward_acc",
        dy,
        x,
        w,
        rstd,
        d_res,
        dw,
        Acc::InPlace,
    )
}

/// [`rmsnorm_backward_acc`] out of place: returns res + dx (one rounding) in a new tensor, leaving
/// `res` as it was; dw += the weight's gradient.
pub fn rmsnorm_backward_acc_from(
    dy: &Tensor,
    x: &Tensor,
    w: &Tensor,
    rstd: &Tensor,
    res: &Tensor,
    dw: &mut Tensor,
) -> Result<Tensor> {
    const OP: &str = "rmsnorm_backward_acc_from";
    let dev = device_of(x, OP)?;
    let (n, c) = x.dims2(OP)?;
    let mut out = empty(&dev, &[n, c], x.dtype())?;
    launch_backward(OP, dy, x, w, rstd, &mut out, dw, Acc::From(res))?;
    Ok(out)
}

/// What the backward's dx holds: its own gradient, that plus the gradient already in it, or that
/// plus another tensor's.
enum Acc<'a> {
    No,
    InPlace,
    From(&'a Tensor),
}

#[allow(clippy::too_many_arguments)]
fn launch_backward(
    op: &'static str,
    dy: &Tensor,
    x: &Tensor,
    w: &Tensor,
    rstd: &Tensor,
    dx: &mut Tensor,
    dw: &mut Tensor,
    acc: Acc,
) -> Result<()> {
    let dev = device_of(x, op)?;
    let (n, c) = x.dims2(op)?;
    // ~4 blocks per SM on an H200-sized GPU, at least one row each.
    let rows_per_block = n.div_ceil(528).max(1);
    let blocks = n.div_ceil(rows_per_block).max(1);
    // C a multiple of 8: a warp per row with a dw partial per warp (up to 8 warps, 48 KiB).
    let warps = (48 * 1024 / (c * 4).max(1)).clamp(1, 8);
    let vec = c.is_multiple_of(8);
    let smem = if vec { warps * c * 4 } else { c * 4 } as u32;
    let mut args = Args::new()
        .ptr(dy, &dev, op)?
        .ptr(x, &dev, op)?
        .ptr(w, &dev, op)?
        .ptr(rstd, &dev, op)?
        .ptr(dx, &dev, op)?
        .ptr(dw, &dev, op)?
        .u32(u32_dim(op, n)?)
        .u32(u32_dim(op, c)?)
        .u32(u32_dim(op, rows_per_block)?);
    if let Acc::From(res) = acc {
        args = args.ptr(res, &dev, op)?;
    }
    let sfx = suffix(x.dtype(), op)?;
    let acc = match acc {
        Acc::No => "",
        Acc::InPlace => "acc_",
        Acc::From(_) => "accfrom_",
    };
    let (func, threads) = if vec {
        (
            format!("rmsnorm_backward_warp_{acc}{sfx}"),
            32 * warps as u32,
        )
    } else {
        (format!("rmsnorm_backward_{acc}{sfx}"), threads_for(c))
    };
    let g = Grid::d1(blocks as u32, threads).with_smem(smem);
    run(&dev, &SRC, &[], &func, g, args)
}
