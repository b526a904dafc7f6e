//! Op variants for work recorded into a CUDA graph ([`super::CudaDevice::capture`]), where nothing
//! may read device memory back to the host.
//!
//! `ops::gather_rows` copies its ids to the host to check them (a clear error instead of an
//! out-of-bounds read); during a capture that copy is not allowed and invalidates the capture. The
//! decode step of the rollout engine gathers token ids it has already checked (prompt ids against
//! the vocabulary before the rollout, sampled ids by construction), so it uses the unchecked
//! variant here.

use super::launch::{kernel_source, run, Args, Grid, KernelSource};
use super::{device_of, empty, suffix};
use crate::{DType, Error, Result, Tensor};

const EMBEDDING: KernelSource = kernel_source!("embedding");

fn u32_dim(op: &'static str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::msg(format!("{op}: dimension {v} exceeds u32")))
}

/// out[n] = table[idx[n]] for table [R, C] (F32 or BF16, on the GPU) and U32 idx [N], WITHOUT
/// checking the ids: every id must be < R (an id ≥ R reads out of bounds).
pub fn gather_rows_trusted(table: &Tensor, idx: &Tensor) -> Result<Tensor> {
    const OP: &str = "gather_rows_trusted";
    let dev = device_of(table, OP)?;
    let (_, c) = table.dims2(OP)?;
    if idx.dtype() != DType::U32 || idx.rank() != 1 {
        return Err(Error::shape(
            OP,
            "idx must be a rank-1 U32 tensor".to_string(),
        ));
    }
    table.check_same_device(idx, OP)?;
    let n = idx.numel();
    let out = empty(&dev, &[n, c], table.dtype())?;
    let args = Args::new()
        .ptr(table, &dev, OP)?
        .ptr(idx, &dev, OP)?
        .ptr(&out, &dev, OP)?
        .u32(u32_dim(OP, n)?)
        .u32(u32_dim(OP, c)?);
    let func = format!("gather_rows_{}", suffix(table.dtype(), OP)?);
    let blocks = n.clamp(1, 65535) as u32;
    run(&dev, &EMBEDDING, &[], &func, Grid::d1(blocks, 256), args)?;
    Ok(out)
}
