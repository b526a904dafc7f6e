//! Rotary position embedding, HF `rotate_half` convention: for i < D/2 and
//! a = pos · inv_freq[i] with inv_freq[i] = 1 / theta^(2i/D) (both in f32, as HF computes them),
//! y[i] = x[i]·cos a − x[i+D/2]·sin a and y[i+D/2] = x[i+D/2]·cos a + x[i]·sin a.
//! The backward is the rotation by −a.
//!
//! [`rope_bias`] is the forward of a biased projection's output: rope(x + b) from the f32 GEMM
//! output x, with the bias add and the rotation in f32 and one rounding to the output dtype (the
//! values of `bias_cast` then `rope`, less one bf16 rounding, in one pass instead of two).

use super::{check_dtype, check_float, check_shape};
use crate::{DType, Device, Error, Result, Tensor};

/// x[N,Hx,D] (Hx = H for queries, K for keys), pos[N] U32 -> y[N,Hx,D]. D must be even.
pub fn rope(x: &Tensor, pos: &Tensor, theta: f32) -> Result<Tensor> {
    const OP: &str = "rope";
    check_rope(OP, x, pos, theta)?;
    match x.device() {
        Device::Cpu => crate::cpu::rope::rope(x, pos, theta),
        Device::Cuda(_) => crate::cuda::rope::rope(x, pos, theta),
    }
}

/// x[N,Hx,D] f32 (a GEMM's unrounded output), b[Hx·D] in `dtype`, pos[N] U32 -> rope(x + b)
/// [N,Hx,D] in `dtype`, rounded once. D must be even.
pub fn rope_bias(x: &Tensor, b: &Tensor, pos: &Tensor, theta: f32, dtype: DType) -> Result<Tensor> {
    const OP: &str = "rope_bias";
    check_rope(OP, x, pos, theta)?;
    check_dtype(OP, x, DType::F32)?;
    check_dtype(OP, b, dtype)?;
    x.check_same_device(b, OP)?;
    let (_, hx, d) = x.dims3(OP)?;
    check_shape(OP, "b", b, &[hx * d])?;
    match x.device() {
        Device::Cpu => crate::cpu::rope::rope_bias(x, b, pos, theta, dtype),
        Device::Cuda(_) => crate::cuda::rope::rope_bias(x, b, pos, theta, dtype),
    }
}

/// dy[N,Hx,D], pos[N] -> dx[N,Hx,D] (rotation by −a).
pub fn rope_backward(dy: &Tensor, pos: &Tensor, theta: f32) -> Result<Tensor> {
    const OP: &str = "rope_backward";
    check_rope(OP, dy, pos, theta)?;
    match dy.device() {
        Device::Cpu => crate::cpu::rope::rope_backward(dy, pos, theta),
        Device::Cuda(_) => crate::cuda::rope::rope_backward(dy, pos, theta),
    }
}

pub(super) fn check_rope(op: &'static str, x: &Tensor, pos: &Tensor, theta: f32) -> Result<()> {
    check_float(op, x)?;
    let (n, _hx, d) = x.dims3(op)?;
    if d % 2 != 0 {
        return Err(Error::shape(op, format!("head dim D = {d} must be even")));
    }
    if !(theta.is_finite() && theta > 0.0) {
        return Err(Error::msg(format!(
            "{op}: theta must be a positive number, got {theta}"
        )));
    }
    check_dtype(op, pos, DType::U32)?;
    x.check_same_device(pos, op)?;
    check_shape(op, "pos", pos, &[n])
}
