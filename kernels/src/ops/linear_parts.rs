//! The two halves of [`super::linear_backward`] as separate ops: the input gradient
//! dx = dy · w, and the weight gradient dw (+)= dyᵀ · x with db += Σ_n dy[n]. Together they compute
//! exactly what `linear_backward` does (the same GEMMs and kernels); apart, the weight half can be
//! queued somewhere else than the chain of input gradients that the rest of a backward waits on
//! (a side lane of the GPU: model/src/llama/grad_lane.rs).

use super::linear::check_weight_grads;
use super::{check_float, check_same, check_shape, GradStore};
use crate::{Device, Result, Tensor};

/// dx[N,I] = dy[N,O] · w[O,I], in w's dtype.
pub fn linear_backward_input(dy: &Tensor, w: &Tensor) -> Result<Tensor> {
    const OP: &str = "linear_backward_input";
    check_input_operands(OP, dy, w)?;
    match w.device() {
        Device::Cpu => crate::cpu::linear::linear_backward_input(dy, w),
        Device::Cuda(_) => crate::cuda::linear::linear_backward_input(dy, w),
    }
}

/// dx_acc[N,I] += dy[N,O] · w[O,I].
pub fn linear_backward_input_acc(dy: &Tensor, w: &Tensor, dx_acc: &mut Tensor) -> Result<()> {
    const OP: &str = "linear_backward_input_acc";
    let (n, i) = check_input_operands(OP, dy, w)?;
    check_same(OP, w, &[dx_acc])?;
    check_shape(OP, "dx_acc", dx_acc, &[n, i])?;
    match w.device() {
        Device::Cpu => {
            let dx = crate::cpu::linear::linear_backward_input(dy, w)?;
            super::add_inplace(dx_acc, &dx)
        }
        Device::Cuda(_) => crate::cuda::linear::linear_backward_input_acc(dy, w, dx_acc),
    }
}

/// dw[O,I] (+)= dyᵀ · x as `store` says and db[O] += Σ_n dy[n] (dw, db F32).
pub fn linear_backward_weight(
    dy: &Tensor,
    x: &Tensor,
    dw: &mut Tensor,
    db: Option<&mut Tensor>,
    store: GradStore,
) -> Result<()> {
    const OP: &str = "linear_backward_weight";
    check_float(OP, x)?;
    let (n, i) = x.dims2(OP)?;
    let (_, o) = dy.dims2(OP)?;
    check_same(OP, x, &[dy])?;
    check_shape(OP, "dy", dy, &[n, o])?;
    check_weight_grads(OP, x, dw, db.as_deref(), o, i)?;
    match x.device() {
        Device::Cpu => crate::cpu::linear::linear_backward_weight(dy, x, dw, db, store),
        Device::Cuda(_) => crate::cuda::linear::linear_backward_weight(dy, x, dw, db, store),
    }
}

/// dy[N,O] and w[O,I] of one float dtype and device: returns (N, I).
fn check_input_operands(op: &'static str, dy: &Tensor, w: &Tensor) -> Result<(usize, usize)> {
    check_float(op, w)?;
    let (n, _) = dy.dims2(op)?;
    let (o, i) = w.dims2(op)?;
    check_same(op, w, &[dy])?;
    check_shape(op, "dy", dy, &[n, o])?;
    Ok((n, i))
}
