//! linear: y[N,O] = x[N,I] · w[O,I]ᵀ + b[O] (HF weight layout), and its backward.
//!
//! The backward accumulates into dw and db (+=) so that micro-batches add up without extra copies.

use super::{check_dtype, check_float, check_same, check_shape};
use crate::{DType, Device, Error, Result, Tensor};

/// y[N,O] = x[N,I] · w[O,I]ᵀ (+ b[O]). x, w, b share dtype and device; y has their dtype.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    const OP: &str = "linear";
    check_float(OP, x)?;
    let (_n, i) = x.dims2(OP)?;
    let (o, wi) = w.dims2(OP)?;
    check_same(OP, x, &[w])?;
    if wi != i {
        return Err(Error::shape(
            OP,
            format!(
                "x has {i} input features but w has shape {:?} (expected [O, {i}])",
                w.shape()
            ),
        ));
    }
    if let Some(b) = b {
        check_same(OP, x, &[b])?;
        check_shape(OP, "bias b", b, &[o])?;
    }
    match x.device() {
        Device::Cpu => crate::cpu::linear::linear(x, w, b),
        Device::Cuda(_) => crate::cuda::linear::linear(x, w, b),
    }
}

/// Backward of [`linear`]: returns dx[N,I] = dy[N,O] · w[O,I] (dtype of x), and accumulates
/// dw[O,I] += dyᵀ · x and db[O] += Σ_n dy[n] (both F32).
pub fn linear_backward(
    dy: &Tensor,
    x: &Tensor,
    w: &Tensor,
    dw: &mut Tensor,
    db: Option<&mut Tensor>,
) -> Result<Tensor> {
    const OP: &str = "linear_backward";
    check_float(OP, x)?;
    let (n, i) = x.dims2(OP)?;
    let (o, _) = w.dims2(OP)?;
    check_same(OP, x, &[w, dy])?;
    check_shape(OP, "w", w, &[o, i])?;
    check_shape(OP, "dy", dy, &[n, o])?;
    check_shape(OP, "dw", dw, &[o, i])?;
    check_dtype(OP, dw, DType::F32)?;
    x.check_same_device(dw, OP)?;
    if let Some(db) = &db {
        check_shape(OP, "db", db, &[o])?;
        check_dtype(OP, db, DType::F32)?;
        x.check_same_device(db, OP)?;
    }
    match x.device() {
        Device::Cpu => crate::cpu::linear::linear_backward(dy, x, w, dw, db),
        Device::Cuda(_) => crate::cuda::linear::linear_backward(dy, x, w, dw, db),
    }
}
