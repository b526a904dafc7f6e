//! AdamW on the CPU, element by element in f32 in the order PyTorch's kernels use.

use half::bf16;

use super::{f32s, f32s_mut};
use crate::ops::AdamWScalars;
use crate::{Error, Result, Storage, Tensor};

/// `grad_scale` multiplies each gradient element as it is read (gradient clipping; 1 for none):
/// the same f32 product `scale_inplace` would store, without writing the gradients.
pub fn adamw_step(
    master: &mut Tensor,
    grad: &Tensor,
    grad_scale: f32,
    m: &mut Tensor,
    v: &mut Tensor,
    s: &AdamWScalars,
    working: Option<&mut Tensor>,
) -> Result<()> {
    const OP: &str = "adamw_step";
    let g = f32s(OP, grad)?;
    let (p, m, v) = (f32s_mut(OP, master)?, f32s_mut(OP, m)?, f32s_mut(OP, v)?);
    for k in 0..p.len() {
        let gk = if grad_scale != 1.0 {
            g[k] * grad_scale
        } else {
            g[k]
        };
        (p[k], m[k], v[k]) = update(p[k], gk, m[k], v[k], s);
    }
    if let Some(w) = working {
        match w.storage_mut() {
            Storage::CpuBF16(out) => out
                .iter_mut()
                .zip(p.iter())
                .for_each(|(o, &x)| *o = bf16::from_f32(x)),
            _ => {
                return Err(Error::msg(
                    "adamw_step: working copy must be a cpu bf16 tensor",
                ))
            }
        }
    }
    Ok(())
}

/// One element: returns the new (param, m, v).
#[inline]
pub fn update(p: f32, g: f32, m: f32, v: f32, s: &AdamWScalars) -> (f32, f32, f32) {
    let p = p * s.decay;
    // torch.lerp: start + w·(end − start) for |w| < 0.5, else end − (end − start)·(1 − w).
    let w = s.one_minus_beta1;
    let m = if w.abs() < 0.5 {
        m + w * (g - m)
    } else {
        g - (g - m) * (1.0 - w)
    };
    let v = v * s.beta2 + s.one_minus_beta2 * g * g;
    let denom = v.sqrt() / s.bias_correction2_sqrt + s.eps;
    (p + s.neg_step_size * m / denom, m, v)
}
