//! Rotary embedding on the CPU.

use super::{f32s, u32s};
use crate::{DType, Error, Result, Tensor};

pub fn rope(x: &Tensor, pos: &Tensor, theta: f32) -> Result<Tensor> {
    rotate("rope", x, pos, theta, 1.0)
}

pub fn rope_backward(dy: &Tensor, pos: &Tensor, theta: f32) -> Result<Tensor> {
    rotate("rope_backward", dy, pos, theta, -1.0)
}

/// rope(x + b); the CPU holds f32 only.
pub fn rope_bias(x: &Tensor, b: &Tensor, pos: &Tensor, theta: f32, dtype: DType) -> Result<Tensor> {
    const OP: &str = "rope_bias";
    if dtype != DType::F32 {
        return Err(Error::DType { op: OP, dtype });
    }
    let (n, hx, d) = x.dims3(OP)?;
    let bs = f32s(OP, b)?;
    let mut xb = f32s(OP, x)?.to_vec();
    for row in xb.chunks_exact_mut((hx * d).max(1)) {
        row.iter_mut().zip(bs).for_each(|(v, b)| *v += b);
    }
    rotate(OP, &super::tensor(xb, &[n, hx, d])?, pos, theta, 1.0)
}

/// inv_freq[i] = 1 / theta^(2i/D) for i < D/2, in f32 exactly as HF computes it.
pub fn inv_freq(theta: f32, d: usize) -> Vec<f32> {
    (0..d / 2)
        .map(|i| 1.0 / theta.powf((2 * i) as f32 / d as f32))
        .collect()
}

/// Rotates each (x[i], x[i+D/2]) pair by `sign`·a (sign = 1 forward, −1 backward).
fn rotate(op: &'static str, x: &Tensor, pos: &Tensor, theta: f32, sign: f32) -> Result<Tensor> {
    let (n, hx, d) = x.dims3(op)?;
    let (xs, ps) = (f32s(op, x)?, u32s(op, pos)?);
    let half = d / 2;
    let freqs = inv_freq(theta, d);
    let mut y = vec![0.0f32; xs.len()];
    let (mut cos, mut sin) = (vec![0.0f32; half], vec![0.0f32; half]);
    for (t, &p) in ps.iter().enumerate().take(n) {
        // Angle in f32 (HF: inv_freq @ position_ids.float()), then cos / sin of that f32 angle.
        for i in 0..half {
            let a = p as f32 * freqs[i];
            cos[i] = a.cos();
            sin[i] = sign * a.sin();
        }
        for h in 0..hx {
            let base = (t * hx + h) * d;
            let (xr, yr) = (&xs[base..base + d], &mut y[base..base + d]);
            for i in 0..half {
                let (x1, x2) = (xr[i], xr[i + half]);
                yr[i] = x1 * cos[i] - x2 * sin[i];
                yr[i + half] = x2 * cos[i] + x1 * sin[i];
            }
        }
    }
    super::tensor(y, &[n, hx, d])
}
