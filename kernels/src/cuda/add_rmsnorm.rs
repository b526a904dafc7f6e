//! Residual add + RMSNorm on the GPU (`cu/add_rmsnorm.cu`): a block per row with one 8-wide chunk
//! per thread when C allows (C a multiple of 8, at most 8192), else a warp per row.

use super::launch::{kernel_source, run, Args, Grid, KernelSource};
use super::{device_of, empty, suffix};
use crate::ops::add_rmsnorm::AddNorm;
use crate::{DType, Error, Result, Tensor};

const SRC: KernelSource = kernel_source!("add_rmsnorm");

fn u32_dim(op: &'static str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::msg(format!("{op}: dimension {v} exceeds u32")))
}

pub fn add_rmsnorm(x: &Tensor, y: &Tensor, w: &Tensor, eps: f32) -> Result<AddNorm> {
    const OP: &str = "add_rmsnorm";
    let dev = device_of(x, OP)?;
    let (n, c) = x.dims2(OP)?;
    let r = empty(&dev, &[n, c], x.dtype())?;
    let out = empty(&dev, &[n, c], x.dtype())?;
    let rstd = empty(&dev, &[n], DType::F32)?;
    let args = Args::new()
        .ptr(x, &dev, OP)?
        .ptr(y, &dev, OP)?
        .ptr(w, &dev, OP)?
        .ptr(&r, &dev, OP)?
        .ptr(&out, &dev, OP)?
        .ptr(&rstd, &dev, OP)?
        .u32(u32_dim(OP, n)?)
        .u32(u32_dim(OP, c)?)
        .f32(eps);
    let sfx = suffix(x.dtype(), OP)?;
    if c > 0 && c.is_multiple_of(8) && c <= 8192 {
        let threads = (c / 8).next_multiple_of(32) as u32;
        let g = Grid::d1(n.clamp(1, 1 << 20) as u32, threads);
        run(&dev, &SRC, &[], &format!("add_rmsnorm_row_{sfx}"), g, args)?;
    } else {
        let g = Grid::d1(n.div_ceil(8).clamp(1, 65535 * 4) as u32, 256);
        run(&dev, &SRC, &[], &format!("add_rmsnorm_{sfx}"), g, args)?;
    }
    Ok(AddNorm { r, out, rstd })
}

/// [`add_rmsnorm`] with y the sum of the f32 partials p [S, N, C] (`add_rmsnorm_partials_row_*`:
/// a block per row; the op checked that C is a multiple of 8, at most 8192).
pub fn add_rmsnorm_partials(x: &Tensor, p: &Tensor, w: &Tensor, eps: f32) -> Result<AddNorm> {
    const OP: &str = "add_rmsnorm_partials";
    let dev = device_of(x, OP)?;
    let (n, c) = x.dims2(OP)?;
    let r = empty(&dev, &[n, c], x.dtype())?;
    let out = empty(&dev, &[n, c], x.dtype())?;
    let rstd = empty(&dev, &[n], DType::F32)?;
    if n == 0 || c == 0 {
        return Ok(AddNorm { r, out, rstd });
    }
    let args = Args::new()
        .ptr(x, &dev, OP)?
        .ptr(p, &dev, OP)?
        .u32(u32_dim(OP, p.shape()[0])?)
        .ptr(w, &dev, OP)?
        .ptr(&r, &dev, OP)?
        .ptr(&out, &dev, OP)?
        .ptr(&rstd, &dev, OP)?
        .u32(u32_dim(OP, n)?)
        .u32(u32_dim(OP, c)?)
        .f32(eps);
    let threads = (c / 8).next_multiple_of(32) as u32;
    let g = Grid::d1(n.clamp(1, 1 << 20) as u32, threads);
    let func = format!("add_rmsnorm_partials_row_{}", suffix(x.dtype(), OP)?);
    run(&dev, &SRC, &[], &func, g, args)?;
    Ok(AddNorm { r, out, rstd })
}
