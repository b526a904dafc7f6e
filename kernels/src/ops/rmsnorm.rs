//! RMSNorm as HF `LlamaRMSNorm`: y = w * (x * rstd), rstd = 1 / sqrt(mean(x²) + eps), with the
//! normalisation in f32 whatever the input dtype. The backward needs the saved rstd.

use super::{check_dtype, check_float, check_same, check_shape};
use crate::{DType, Device, Result, Tensor};

/// Forward: x[N,C], w[C] -> (y[N,C] in x's dtype, rstd[N] F32).
pub fn rmsnorm(x: &Tensor, w: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
    const OP: &str = "rmsnorm";
    check_float(OP, x)?;
    let (_n, c) = x.dims2(OP)?;
    check_same(OP, x, &[w])?;
    check_shape(OP, "weight w", w, &[c])?;
    match x.device() {
        Device::Cpu => crate::cpu::rmsnorm::rmsnorm(x, w, eps),
        Device::Cuda(_) => crate::cuda::rmsnorm::rmsnorm(x, w, eps),
    }
}

/// Backward: dy[N,C], x[N,C], w[C], rstd[N] F32 -> (dx[N,C] in x's dtype, dw[C] F32).
pub fn rmsnorm_backward(
    dy: &Tensor,
    x: &Tensor,
    w: &Tensor,
    rstd: &Tensor,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "rmsnorm_backward";
    check_float(OP, x)?;
    let (n, c) = x.dims2(OP)?;
    check_same(OP, x, &[w, dy])?;
    check_shape(OP, "dy", dy, &[n, c])?;
    check_shape(OP, "weight w", w, &[c])?;
    check_dtype(OP, rstd, DType::F32)?;
    x.check_same_device(rstd, OP)?;
    check_shape(OP, "rstd", rstd, &[n])?;
    match x.device() {
        Device::Cpu => crate::cpu::rmsnorm::rmsnorm_backward(dy, x, w, rstd),
        Device::Cuda(_) => crate::cuda::rmsnorm::rmsnorm_backward(dy, x, w, rstd),
    }
}
