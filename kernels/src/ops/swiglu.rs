//! SwiGLU activation of the Llama MLP: h = silu(gate) * up, silu(g) = g / (1 + e^(−g)).

use super::{check_float, check_same, check_shape};
use crate::{Device, Result, Tensor};

/// gate[N,F], up[N,F] -> h[N,F].
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    const OP: &str = "swiglu";
    check_float(OP, gate)?;
    let (n, f) = gate.dims2(OP)?;
    check_same(OP, gate, &[up])?;
    check_shape(OP, "up", up, &[n, f])?;
    match gate.device() {
        Device::Cpu => crate::cpu::swiglu::swiglu(gate, up),
        Device::Cuda(_) => crate::cuda::swiglu::swiglu(gate, up),
    }
}

/// dh[N,F], gate, up -> (dgate[N,F], dup[N,F]).
pub fn swiglu_backward(dh: &Tensor, gate: &Tensor, up: &Tensor) -> Result<(Tensor, Tensor)> {
    const OP: &str = "swiglu_backward";
    check_float(OP, gate)?;
    let (n, f) = gate.dims2(OP)?;
    check_same(OP, gate, &[up, dh])?;
    check_shape(OP, "up", up, &[n, f])?;
    check_shape(OP, "dh", dh, &[n, f])?;
    match gate.device() {
        Device::Cpu => crate::cpu::swiglu::swiglu_backward(dh, gate, up),
        Device::Cuda(_) => crate::cuda::swiglu::swiglu_backward(dh, gate, up),
    }
}
