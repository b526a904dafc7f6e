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

/// The outputs r, out [N,C] in `dtype` and rstd [N] f32, unwritten.
fn outputs(dev: &super::CudaDevice, n: usize, c: usize, dtype: DType) -> Result<AddNorm> {
    Ok(AddNorm {
        r: empty(dev, &[n, c], dtype)?,
        out: empty(dev, &[n, c], dtype)?,
        rstd: empty(dev, &[n], DType::F32)?,
    })
}

/// A block per row, one 8-wide chunk per thread (C a multiple of 8, at most 8192).
fn row_grid(n: usize, c: usize) -> Grid {
    Grid::d1(
        n.clamp(1, 1 << 20) as u32,
        (c / 8).next_multiple_of(32) as u32,
    )
}

/// Appends the arguments both kernels end with (w, r, out, rstd, N, C, eps) to `head`, whose
/// outputs `o` are, and runs `func` on `grid`.
#[allow(clippy::too_many_arguments)]
fn launch(
    op: &'static str,
    dev: &super::CudaDevice,
    head: Args,
    w: &Tensor,
    o: &AddNorm,
    eps: f32,
    func: &str,
    grid: Grid,
) -> Result<()> {
    let (n, c) = o.r.dims2(op)?;
    let args = head
        .ptr(w, dev, op)?
        .ptr(&o.r, dev, op)?
        .ptr(&o.out, dev, op)?
        .ptr(&o.rstd, dev, op)?
        .u32(u32_dim(op, n)?)
        .u32(u32_dim(op, c)?)
        .f32(eps);
    run(dev, &SRC, &[], func, grid, args)
}

pub fn add_rmsnorm(x: &Tensor, y: &Tensor, w: &Tensor, eps: f32) -> Result<AddNorm> {
    const OP: &str = "add_rmsnorm";
    let dev = device_of(x, OP)?;
    let (n, c) = x.dims2(OP)?;
    let o = outputs(&dev, n, c, x.dtype())?;
    let head = Args::new().ptr(x, &dev, OP)?.ptr(y, &dev, OP)?;
    let sfx = suffix(x.dtype(), OP)?;
    if c > 0 && c.is_multiple_of(8) && c <= 8192 {
        let func = format!("add_rmsnorm_row_{sfx}");
        launch(OP, &dev, head, w, &o, eps, &func, row_grid(n, c))?;
    } else {
        let g = Grid::d1(n.div_ceil(8).clamp(1, 65535 * 4) as u32, 256);
        launch(OP, &dev, head, w, &o, eps, &format!("add_rmsnorm_{sfx}"), g)?;
    }
    Ok(o)
}

/// [`add_rmsnorm`] with y the sum of the f32 partials p [S, N, C] (`add_rmsnorm_partials_row_*`:
/// a block per row; the op checked that C is a multiple of 8, at most 8192).
pub fn add_rmsnorm_partials(x: &Tensor, p: &Tensor, w: &Tensor, eps: f32) -> Result<AddNorm> {
    const OP: &str = "add_rmsnorm_partials";
    let dev = device_of(x, OP)?;
    let (n, c) = x.dims2(OP)?;
    let o = outputs(&dev, n, c, x.dtype())?;
    if n == 0 || c == 0 {
        return Ok(o);
    }
    let head = Args::new()
        .ptr(x, &dev, OP)?
        .ptr(p, &dev, OP)?
        .u32(u32_dim(OP, p.shape()[0])?);
    let func = format!("add_rmsnorm_partials_row_{}", suffix(x.dtype(), OP)?);
    launch(OP, &dev, head, w, &o, eps, &func, row_grid(n, c))?;
    Ok(o)
}
