//! SwiGLU on the CPU.

use super::f32s;
use crate::{Result, Tensor};

fn sigmoid(g: f32) -> f32 {
    1.0 / (1.0 + (-g).exp())
}

pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    const OP: &str = "swiglu";
    let (gs, us) = (f32s(OP, gate)?, f32s(OP, up)?);
    let h = gs
        .iter()
        .zip(us)
        .map(|(&g, &u)| g * sigmoid(g) * u)
        .collect();
    super::tensor(h, gate.shape())
}

/// dgate = dh · up · σ(g)(1 + g(1 − σ(g))),  dup = dh · silu(g).
pub fn swiglu_backward(dh: &Tensor, gate: &Tensor, up: &Tensor) -> Result<(Tensor, Tensor)> {
    const OP: &str = "swiglu_backward";
    let (ds, gs, us) = (f32s(OP, dh)?, f32s(OP, gate)?, f32s(OP, up)?);
    let mut dgate = vec![0.0f32; gs.len()];
    let mut dup = vec![0.0f32; gs.len()];
    for k in 0..gs.len() {
        let (g, u, d) = (gs[k], us[k], ds[k]);
        let s = sigmoid(g);
        dgate[k] = d * u * s * (1.0 + g * (1.0 - s));
        dup[k] = d * g * s;
    }
    Ok((
        super::tensor(dgate, gate.shape())?,
        super::tensor(dup, gate.shape())?,
    ))
}
