//! Residual add + RMSNorm on the CPU: the `add` and `rmsnorm` references one after the other.

use crate::ops::add_rmsnorm::AddNorm;
use crate::{Result, Tensor};

pub fn add_rmsnorm(x: &Tensor, y: &Tensor, w: &Tensor, eps: f32) -> Result<AddNorm> {
    let r = super::elementwise::add(x, y)?; // [N,C]
    let (out, rstd) = super::rmsnorm::rmsnorm(&r, w, eps)?;
    Ok(AddNorm { r, out, rstd })
}

/// y = Σ_s p[s] in order (f32: no rounding on the CPU), then [`add_rmsnorm`].
pub fn add_rmsnorm_partials(x: &Tensor, p: &Tensor, w: &Tensor, eps: f32) -> Result<AddNorm> {
    const OP: &str = "add_rmsnorm_partials";
    let (n, c) = x.dims2(OP)?;
    let parts = super::f32s(OP, p)?;
    let mut y = vec![0.0f32; n * c];
    for plane in parts.chunks_exact((n * c).max(1)) {
        y.iter_mut().zip(plane).for_each(|(y, v)| *y += v);
    }
    add_rmsnorm(x, &super::tensor(y, &[n, c])?, w, eps)
}
