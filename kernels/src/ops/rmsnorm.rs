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

/// [`rmsnorm_backward`] accumulating: d_res[N,C] (x's dtype) += dx and dw[C] F32 += the weight's
/// gradient, in place. For a residual stream x_out = x + f(rmsnorm(x)), whose gradient is the
/// sum of the two branches: on the GPU the sum is rounded once, with no dx tensor in between.
pub fn rmsnorm_backward_acc(
    dy: &Tensor,
    x: &Tensor,
    w: &Tensor,
    rstd: &Tensor,
    d_res: &mut Tensor,
    dw: &mut Tensor,
) -> Result<()> {
    check_acc_operands("rmsnorm_backward_acc", dy, x, w, rstd, ("d_res", d_res), dw)?;
    match x.device() {
        Device::Cpu => {
            let (dx, g) = crate::cpu::rmsnorm::rmsnorm_backward(dy, x, w, rstd)?;
            super::add_inplace(d_res, &dx)?;
            super::add_inplace(dw, &g)
        }
        Device::Cuda(_) => crate::cuda::rmsnorm::rmsnorm_backward_acc(dy, x, w, rstd, d_res, dw),
    }
}

/// [`rmsnorm_backward_acc`] out of place: returns res[N,C] + dx (x's dtype; on the GPU one
/// rounding, the bits of the in-place op) as a new tensor and adds the weight's gradient to dw[C]
/// F32. `res` is only read: for a backward whose residual gradient is still being read elsewhere
/// (a weight gradient queued on a side lane of the GPU).
pub fn rmsnorm_backward_acc_from(
    dy: &Tensor,
    x: &Tensor,
    w: &Tensor,
    rstd: &Tensor,
    res: &Tensor,
    dw: &mut Tensor,
) -> Result<Tensor> {
    check_acc_operands(
        "rmsnorm_backward_acc_from",
        dy,
        x,
        w,
        rstd,
        ("res", res),
        dw,
    )?;
    match x.device() {
        Device::Cpu => {
            let mut out = res.try_clone()?;
            rmsnorm_backward_acc(dy, x, w, rstd, &mut out, dw)?;
            Ok(out)
        }
        Device::Cuda(_) => crate::cuda::rmsnorm::rmsnorm_backward_acc_from(dy, x, w, rstd, res, dw),
    }
}

/// The checks of an accumulating norm backward: dy, x and the residual gradient `res` (named for
/// the message) [N,C] of one float dtype, w [C], rstd [N] F32, dw [C] F32, all on x's device.
fn check_acc_operands(
    op: &'static str,
    dy: &Tensor,
    x: &Tensor,
    w: &Tensor,
    rstd: &Tensor,
    (res_name, res): (&str, &Tensor),
    dw: &Tensor,
) -> Result<()> {
    check_float(op, x)?;
    let (n, c) = x.dims2(op)?;
    check_same(op, x, &[w, dy, res])?;
    check_shape(op, "dy", dy, &[n, c])?;
    check_shape(op, res_name, res, &[n, c])?;
    check_shape(op, "weight w", w, &[c])?;
    check_dtype(op, rstd, DType::F32)?;
    x.check_same_device(rstd, op)?;
    check_shape(op, "rstd", rstd, &[n])?;
    check_dtype(op, dw, DType::F32)?;
    x.check_same_device(dw, op)?;
    check_shape(op, "dw", dw, &[c])
}
