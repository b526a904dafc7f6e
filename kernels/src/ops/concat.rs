//! Concatenation for fused projections, and its inverse for their weight gradients:
//! - concat_rows: tensors stacked along their first dimension, e.g. the q, k, v projection weights
//!   [H·D, C], [K·D, C], [K·D, C] into one [(H+2K)·D, C] weight so one GEMM computes all three;
//! - concat_cols: [N, W_i] matrices side by side, e.g. dq, dk, dv into the [N, (H+2K)·D] output
//!   gradient of that fused projection (its backward is then one dx GEMM and one dW GEMM);
//! - write_rows: a tensor's rows into a block of rows of a bigger one, e.g. each half of a decode
//!   step's final hidden rows into the whole step's [S, C] (actor's decode lanes);
//! - split_store: the fused dW [(H+2K)·D, C] (or db) back into the parts' gradient buffers,
//!   written or added as a `GradStore` says.

use super::{check_dtype, check_same, GradStore};
use crate::{DType, Device, Error, Result, Tensor};

/// parts[i]: [R_i, ...rest] (same rest, dtype and device; any dtype, rank ≥ 1) -> [Σ R_i, ...rest].
pub fn concat_rows(parts: &[&Tensor]) -> Result<Tensor> {
    const OP: &str = "concat_rows";
    let first = parts
        .first()
        .ok_or_else(|| Error::msg(format!("{OP}: no tensors to concatenate")))?;
    if first.rank() == 0 {
        return Err(Error::shape(OP, "the tensors must have rank at least 1"));
    }
    check_same(OP, first, &parts[1..])?;
    let rest = &first.shape()[1..];
    for (i, t) in parts.iter().enumerate() {
        if &t.shape()[1..] != rest {
            return Err(Error::shape(
                OP,
                format!(
                    "tensor {i} has shape {:?}, but all must be [R, {rest:?}] like tensor 0",
                    t.shape()
                ),
            ));
        }
    }
    let rows: usize = parts.iter().map(|t| t.shape()[0]).sum();
    let mut shape = vec![rows];
    shape.extend_from_slice(rest);
    match first.device() {
        Device::Cpu => crate::cpu::concat::concat_rows(parts, &shape),
        Device::Cuda(_) => crate::cuda::concat::concat_rows(parts, &shape),
    }
}

/// src [r, ...rest] into rows [row, row + r) of dst [R, ...rest] (same rest, dtype and device;
/// any dtype). On a GPU it is one device copy queued on the device's current stream.
pub fn write_rows(dst: &mut Tensor, row: usize, src: &Tensor) -> Result<()> {
    const OP: &str = "write_rows";
    check_same(OP, dst, &[src])?;
    if dst.rank() == 0 || src.rank() != dst.rank() || src.shape()[1..] != dst.shape()[1..] {
        return Err(Error::shape(
            OP,
            format!(
                "src {:?} must be [r, ...] with the trailing dims of dst {:?}",
                src.shape(),
                dst.shape()
            ),
        ));
    }
    let r = src.shape()[0];
    if row + r > dst.shape()[0] {
        return Err(Error::shape(
            OP,
            format!(
                "rows [{row}, {}) do not fit dst's {} rows",
                row + r,
                dst.shape()[0]
            ),
        ));
    }
    let offset = row * src.numel() / r.max(1); // elements before row `row`
    match dst.device() {
        Device::Cpu => crate::cpu::concat::write_rows(dst, offset, src),
        Device::Cuda(_) => crate::cuda::concat::write_rows(dst, offset, src),
    }
}

/// parts[i]: [N, W_i] (same N, dtype and device; f32 or bf16) -> [N, Σ W_i], part i in columns
/// [Σ_{j<i} W_j, Σ_{j≤i} W_j).
pub fn concat_cols(parts: &[&Tensor]) -> Result<Tensor> {
    const OP: &str = "concat_cols";
    let first = parts
        .first()
        .ok_or_else(|| Error::msg(format!("{OP}: no tensors to concatenate")))?;
    check_same(OP, first, &parts[1..])?;
    let (n, _) = first.dims2(OP)?;
    let mut width = 0;
    for (i, t) in parts.iter().enumerate() {
        let (rows, w) = t.dims2(OP)?;
        if rows != n {
            return Err(Error::shape(
                OP,
                format!("tensor {i} has {rows} rows, tensor 0 has {n}"),
            ));
        }
        width += w;
    }
    match first.device() {
        Device::Cpu => crate::cpu::concat::concat_cols(parts, n, width),
        Device::Cuda(_) => crate::cuda::concat::concat_cols(parts, n, width),
    }
}

/// The inverse of [`concat_rows`] for gradients: `src`'s elements, in order, go to the parts
/// (part i gets the next `parts[i].numel()` of them), written over each part or added to it as
/// `store` says. All F32 on one device; the parts' sizes must add up to `src`'s.
pub fn split_store(src: &Tensor, parts: &mut [&mut Tensor], store: GradStore) -> Result<()> {
    const OP: &str = "split_store";
    check_dtype(OP, src, DType::F32)?;
    let mut total = 0;
    for t in parts.iter() {
        check_dtype(OP, t, DType::F32)?;
        src.check_same_device(t, OP)?;
        total += t.numel();
    }
    if total != src.numel() {
        return Err(Error::shape(
            OP,
            format!(
                "the parts hold {total} elements, the source {:?} has {}",
                src.shape(),
                src.numel()
            ),
        ));
    }
    match src.device() {
        Device::Cpu => crate::cpu::concat::split_store(src, parts, store),
        Device::Cuda(_) => crate::cuda::concat::split_store(src, parts, store),
    }
}
