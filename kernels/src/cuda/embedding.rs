//! Embedding rows on the GPU: gather by id, and the backward scatter-add (f32 atomics).
//!
//! Ids are copied to the host and checked before launch (N u32s, one small sync), so an id ≥ R is
//! the same clear error as on the CPU and the kernels never read out of bounds.

use super::launch::{kernel_source, run, Args, Grid, KernelSource};
use super::{device_of, empty, suffix};
use crate::{Error, Result, Tensor};

const SRC: KernelSource = kernel_source!("embedding");

fn check_ids(op: &'static str, idx: &Tensor, rows: usize) -> Result<()> {
    for (n, &id) in idx.to_vec_u32()?.iter().enumerate() {
        if id as usize >= rows {
            return Err(Error::msg(format!(
                "{op}: id {id} at position {n} is out of range for a table of {rows} rows"
            )));
        }
    }
    Ok(())
}

fn u32_dim(op: &'static str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::msg(format!("{op}: dimension {v} exceeds u32")))
}

pub fn gather_rows(table: &Tensor, idx: &Tensor) -> Result<Tensor> {
    const OP: &str = "gather_rows";
    let dev = device_of(table, OP)?;
    let (r, c) = table.dims2(OP)?;
    let n = idx.numel();
    check_ids(OP, idx, r)?;
    let out = empty(&dev, &[n, c], table.dtype())?;
    let args = Args::new()
        .ptr(table, &dev, OP)?
        .ptr(idx, &dev, OP)?
        .ptr(&out, &dev, OP)?
        .u32(u32_dim(OP, n)?)
        .u32(u32_dim(OP, c)?);
    let func = format!("gather_rows_{}", suffix(table.dtype(), OP)?);
    let blocks = n.clamp(1, 65535) as u32;
    run(&dev, &SRC, &[], &func, Grid::d1(blocks, 256), args)?;
    Ok(out)
}

pub fn scatter_add_rows(dst: &mut Tensor, idx: &Tensor, src: &Tensor) -> Result<()> {
    const OP: &str = "scatter_add_rows";
    let dev = device_of(dst, OP)?;
    let (r, c) = dst.dims2(OP)?;
    let n = idx.numel();
    check_ids(OP, idx, r)?;
    let args = Args::new()
        .ptr(dst, &dev, OP)?
        .ptr(idx, &dev, OP)?
        .ptr(src, &dev, OP)?
        .u32(u32_dim(OP, n)?)
        .u32(u32_dim(OP, c)?);
    let func = format!("scatter_add_rows_{}", suffix(src.dtype(), OP)?);
    let blocks = n.clamp(1, 65535) as u32;
    if n == 0 {
        return Ok(());
    }
    run(&dev, &SRC, &[], &func, Grid::d1(blocks, 256), args)
}
