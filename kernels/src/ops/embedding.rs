//! Embedding lookup: gather rows of a table by id, and its backward (scatter-add rows by id).
//!
//! On the GPU the ids must be checked on the host before launch (an id ≥ R is an error naming the
//! id, never an out-of-bounds access). [`gather_rows`] and [`scatter_add_rows`] copy them back for
//! that, which makes the host wait for the GPU; the `_host_ids` variants take the caller's host copy
//! of the same ids instead (a training batch is built from host tokens), so nothing waits.

use super::{check_dtype, check_float, check_shape};
use crate::{DType, Device, Error, Result, Tensor};

/// out[N,C] = table[idx[n], :] for table[R,C] and U32 idx[N]. Ids ≥ R are an error.
pub fn gather_rows(table: &Tensor, idx: &Tensor) -> Result<Tensor> {
    gather(table, idx, None)
}

/// [`gather_rows`] with `ids` = the content of `idx`, held by the caller on the host: the ids are
/// checked there, so the GPU path needs no device-to-host copy. Should `idx` on the device hold an
/// id ≥ R all the same, that row of the output is zero (the kernel bounds every id).
pub fn gather_rows_host_ids(table: &Tensor, idx: &Tensor, ids: &[u32]) -> Result<Tensor> {
    gather(table, idx, Some(ids))
}

fn gather(table: &Tensor, idx: &Tensor, host_ids: Option<&[u32]>) -> Result<Tensor> {
    const OP: &str = "gather_rows";
    check_float(OP, table)?;
    table.dims2(OP)?;
    check_ids(OP, table, idx, host_ids)?;
    match table.device() {
        Device::Cpu => crate::cpu::embedding::gather_rows(table, idx),
        Device::Cuda(_) => crate::cuda::embedding::gather_rows(table, idx, host_ids),
    }
}

/// dst[idx[n], :] += src[n, :] for F32 dst[R,C], U32 idx[N], src[N,C]; repeated ids accumulate.
pub fn scatter_add_rows(dst: &mut Tensor, idx: &Tensor, src: &Tensor) -> Result<()> {
    scatter_add(dst, idx, src, None)
}

/// [`scatter_add_rows`] with `ids` = the content of `idx` on the host (see
/// [`gather_rows_host_ids`]); a device id ≥ R that `ids` did not show is skipped.
pub fn scatter_add_rows_host_ids(
    dst: &mut Tensor,
    idx: &Tensor,
    ids: &[u32],
    src: &Tensor,
) -> Result<()> {
    scatter_add(dst, idx, src, Some(ids))
}

fn scatter_add(
    dst: &mut Tensor,
    idx: &Tensor,
    src: &Tensor,
    host_ids: Option<&[u32]>,
) -> Result<()> {
    const OP: &str = "scatter_add_rows";
    check_dtype(OP, dst, DType::F32)?;
    check_float(OP, src)?;
    let (_r, c) = dst.dims2(OP)?;
    check_ids(OP, dst, idx, host_ids)?;
    dst.check_same_device(src, OP)?;
    check_shape(OP, "src", src, &[idx.numel(), c])?;
    match dst.device() {
        Device::Cpu => crate::cpu::embedding::scatter_add_rows(dst, idx, src),
        Device::Cuda(_) => crate::cuda::embedding::scatter_add_rows(dst, idx, src, host_ids),
    }
}

fn check_ids(
    op: &'static str,
    table: &Tensor,
    idx: &Tensor,
    host_ids: Option<&[u32]>,
) -> Result<()> {
    check_dtype(op, idx, DType::U32)?;
    table.check_same_device(idx, op)?;
    if idx.rank() != 1 {
        return Err(Error::shape(
            op,
            format!("idx must be rank 1 [N], got shape {:?}", idx.shape()),
        ));
    }
    if let Some(h) = host_ids {
        if h.len() != idx.numel() {
            return Err(Error::shape(
                op,
                format!(
                    "{} host ids given for an idx of {} ids",
                    h.len(),
                    idx.numel()
                ),
            ));
        }
        // Checked here on every device, so a bad id is the same error everywhere.
        let (rows, _) = table.dims2(op)?;
        check_ids_in_range(op, h, rows)?;
    }
    Ok(())
}

/// Errors naming the first id of `ids` that is ≥ `rows` (and its position).
pub(crate) fn check_ids_in_range(op: &'static str, ids: &[u32], rows: usize) -> Result<()> {
    match ids.iter().enumerate().find(|(_, &id)| id as usize >= rows) {
        Some((n, id)) => Err(Error::msg(format!(
            "{op}: id {id} at position {n} is out of range for a table of {rows} rows"
        ))),
        None => Ok(()),
    }
}
