//! Residual add + RMSNorm on the CPU: the `add` and `rmsnorm` references one after the other.

use crate::ops::add_rmsnorm::AddNorm;
use crate::{Result, Tensor};

pub fn add_rmsnorm(x: &Tensor, y: &Tensor, w: &Tensor, eps: f32) -> Result<AddNorm> {
    let r = super::elementwise::add(x, y)?; // [N,C]
    let (out, rstd) = super::rmsnorm::rmsnorm(&r, w, eps)?;
    Ok(AddNorm { r, out, rstd })
}
