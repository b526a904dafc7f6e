//! Embedding rows on the GPU: gather by id, and the backward scatter-add (f32 atomics).
//!
//! The ids are checked against the table before launch so that an id ≥ R is the same clear error
//! as on the CPU: the host copy the caller gives (`host_ids`, checked by the op: no device work, no
//! synchronisation), or, without one, the N ids copied back here (one small synchronisation). The
//! kernels bound every id by R as well, so a wrong host copy can never make them read or write
//! outside the table.

use super::launch::{kernel_source, run, Args, Grid, KernelSource};
use super::{device_of, empty, suffix};
use crate::{Error, Result, Tensor};

const SRC: KernelSource = kernel_source!("embedding");

/// Host ids were checked by the op already; without them the ids are copied back and checked.
fn check_ids(op: &'static str, idx: &Tensor, host_ids: Option<&[u32]>, rows: usize) -> Result<()> {
    match host_ids {
        Some(_) => Ok(()),
        None => crate::ops::embedding::check_ids_in_range(op, &idx.to_vec_u32()?, rows),
    }
}

fn u32_dim(op: &'static str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::msg(format!("{op}: dimension {v} exceeds u32")))
}

/// out[n] = table[idx[n]]; `host_ids`, when given, is the content of `idx` on the host.
pub fn gather_rows(table: &Tensor, idx: &Tensor, host_ids: Option<&[u32]>) -> Result<Tensor> {
    const OP: &str = "gather_rows";
    let dev = device_of(table, OP)?;
    let (r, c) = table.dims2(OP)?;
    let n = idx.numel();
    check_ids(OP, idx, host_ids, r)?;
    let out = empty(&dev, &[n, c], table.dtype())?;
    let args = Args::new()
        .ptr(table, &dev, OP)?
        .ptr(idx, &dev, OP)?
        .ptr(&out, &dev, OP)?
        .u32(u32_dim(OP, n)?)
        .u32(u32_dim(OP, c)?)
        .u32(u32_dim(OP, r)?);
    let func = format!("gather_rows_bounded_{}", suffix(table.dtype(), OP)?);
    let blocks = n.clamp(1, 65535) as u32;
    run(&dev, &SRC, &[], &func, Grid::d1(blocks, 256), args)?;
    Ok(out)
}

/// dst[idx[n]] += src[n]; `host_ids`, when given, is the content of `idx` on the host.
pub fn scatter_add_rows(
    dst: &mut Tensor,
    idx: &Tensor,
    src: &Tensor,
    host_ids: Option<&[u32]>,
) -> Result<()> {
    const OP: &str = "scatter_add_rows";
    let dev = device_of(dst, OP)?;
    let (r, c) = dst.dims2(OP)?;
    let n = idx.numel();
    check_ids(OP, idx, host_ids, r)?;
    if n == 0 {
        return Ok(());
    }
    let args = Args::new()
        .ptr(dst, &dev, OP)?
        .ptr(idx, &dev, OP)?
        .ptr(src, &dev, OP)?
        .u32(u32_dim(OP, n)?)
        .u32(u32_dim(OP, c)?)
        .u32(u32_dim(OP, r)?);
    let func = format!("scatter_add_rows_bounded_{}", suffix(src.dtype(), OP)?);
    let blocks = n.clamp(1, 65535) as u32;
    run(&dev, &SRC, &[], &func, Grid::d1(blocks, 256), args)
}
