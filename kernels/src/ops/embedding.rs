//! Embedding lookup: gather rows of a table by id, and its backward (scatter-add rows by id).

use super::{check_dtype, check_float, check_shape};
use crate::{DType, Device, Error, Result, Tensor};

/// out[N,C] = table[idx[n], :] for table[R,C] and U32 idx[N]. Ids ≥ R are an error.
pub fn gather_rows(table: &Tensor, idx: &Tensor) -> Result<Tensor> {
    const OP: &str = "gather_rows";
    check_float(OP, table)?;
    table.dims2(OP)?;
    check_ids(OP, table, idx)?;
    match table.device() {
        Device::Cpu => crate::cpu::embedding::gather_rows(table, idx),
        Device::Cuda(_) => crate::cuda::embedding::gather_rows(table, idx),
    }
}

/// dst[idx[n], :] += src[n, :] for F32 dst[R,C], U32 idx[N], src[N,C]; repeated ids accumulate.
pub fn scatter_add_rows(dst: &mut Tensor, idx: &Tensor, src: &Tensor) -> Result<()> {
    const OP: &str = "scatter_add_rows";
    check_dtype(OP, dst, DType::F32)?;
    check_float(OP, src)?;
    let (_r, c) = dst.dims2(OP)?;
    check_ids(OP, dst, idx)?;
    dst.check_same_device(src, OP)?;
    check_shape(OP, "src", src, &[idx.numel(), c])?;
    match dst.device() {
        Device::Cpu => crate::cpu::embedding::scatter_add_rows(dst, idx, src),
        Device::Cuda(_) => crate::cuda::embedding::scatter_add_rows(dst, idx, src),
    }
}

fn check_ids(op: &'static str, table: &Tensor, idx: &Tensor) -> Result<()> {
    check_dtype(op, idx, DType::U32)?;
    table.check_same_device(idx, op)?;
    if idx.rank() != 1 {
        return Err(Error::shape(
            op,
            format!("idx must be rank 1 [N], got shape {:?}", idx.shape()),
        ));
    }
    Ok(())
}
