//! SwiGLU over the output of a fused gate/up projection: gu[N, 2F] = x·[W_gate; W_up]ᵀ holds gate
//! in columns [0, F) and up in [F, 2F); h = silu(gate) · up as the `swiglu` op computes it.

use super::check_float;
use crate::{Device, Error, Result, Tensor};

/// gu[N, 2F] -> h[N, F].
pub fn swiglu_packed(gu: &Tensor) -> Result<Tensor> {
    const OP: &str = "swiglu_packed";
    check_float(OP, gu)?;
    let (_n, f2) = gu.dims2(OP)?;
    if f2 % 2 != 0 {
        return Err(Error::shape(
            OP,
            format!("gu must have an even number of columns ([gate | up]), got {f2}"),
        ));
    }
    match gu.device() {
        Device::Cpu => crate::cpu::swiglu_packed::swiglu_packed(gu),
        Device::Cuda(_) => crate::cuda::swiglu_packed::swiglu_packed(gu),
    }
}
