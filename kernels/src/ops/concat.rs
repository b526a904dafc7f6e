//! concat_rows: tensors stacked along their first dimension, e.g. the q, k, v projection weights
//! [H·D, C], [K·D, C], [K·D, C] into one [(H+2K)·D, C] weight so one GEMM computes all three.

use super::check_same;
use crate::{Device, Error, Result, Tensor};

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
