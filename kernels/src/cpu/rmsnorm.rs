//! RMSNorm on the CPU (HF `LlamaRMSNorm` numerics: eps inside the sqrt, weight after normalising).

use super::f32s;
use crate::{Result, Tensor};

pub fn rmsnorm(x: &Tensor, w: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
    const OP: &str = "rmsnorm";
    let (n, c) = x.dims2(OP)?;
    let (xs, ws) = (f32s(OP, x)?, f32s(OP, w)?);
    let mut y = vec![0.0f32; n * c];
    let mut rstd = vec![0.0f32; n];
    for r in 0..n {
        let xr = &xs[r * c..(r + 1) * c];
        // The mean of squares is accumulated in f64 and rounded once: at least as accurate as
        // PyTorch's f32 cascade sum, so both agree to f32 rounding.
        let ms = xr.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / c.max(1) as f64;
        let s = 1.0 / (ms as f32 + eps).sqrt();
        rstd[r] = s;
        for ((o, &v), &g) in y[r * c..(r + 1) * c].iter_mut().zip(xr).zip(ws) {
            *o = g * (v * s);
        }
    }
    Ok((super::tensor(y, &[n, c])?, super::tensor(rstd, &[n])?))
}

/// With g = w ⊙ dy and x̂ = x·rstd:  dx = rstd · (g − x̂ · mean(g ⊙ x̂)),  dw = Σ_n dy ⊙ x̂.
pub fn rmsnorm_backward(
    dy: &Tensor,
    x: &Tensor,
    w: &Tensor,
    rstd: &Tensor,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "rmsnorm_backward";
    let (n, c) = x.dims2(OP)?;
    let (dys, xs, ws, rs) = (f32s(OP, dy)?, f32s(OP, x)?, f32s(OP, w)?, f32s(OP, rstd)?);
    let mut dx = vec![0.0f32; n * c];
    let mut dw = vec![0.0f64; c];
    for r in 0..n {
        let (xr, dyr, s) = (&xs[r * c..(r + 1) * c], &dys[r * c..(r + 1) * c], rs[r]);
        let mut gx = 0.0f64; // Σ_j w_j dy_j x̂_j
        for j in 0..c {
            let xhat = xr[j] * s;
            gx += (ws[j] * dyr[j]) as f64 * xhat as f64;
            dw[j] += (dyr[j] * xhat) as f64;
        }
        let mean_gx = (gx / c.max(1) as f64) as f32;
        for j in 0..c {
            dx[r * c + j] = s * (ws[j] * dyr[j] - xr[j] * s * mean_gx);
        }
    }
    let dw = dw.into_iter().map(|v| v as f32).collect();
    Ok((super::tensor(dx, &[n, c])?, super::tensor(dw, &[c])?))
}
