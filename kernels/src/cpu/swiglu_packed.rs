//! SwiGLU of a packed [gate | up] row on the CPU: the `swiglu` reference on the two halves.

use super::f32s;
use crate::{Result, Tensor};

pub fn swiglu_packed(gu: &Tensor) -> Result<Tensor> {
    const OP: &str = "swiglu_packed";
    let (n, f2) = gu.dims2(OP)?;
    let f = f2 / 2;
    let (mut gate, mut up) = (Vec::with_capacity(n * f), Vec::with_capacity(n * f));
    for row in f32s(OP, gu)?.chunks_exact(f2.max(1)).take(n) {
        gate.extend_from_slice(&row[..f]);
        up.extend_from_slice(&row[f..]);
    }
    let (gate, up) = (super::tensor(gate, &[n, f])?, super::tensor(up, &[n, f])?);
    super::swiglu::swiglu(&gate, &up)
}
