//! Residual add fused with the RMSNorm after it: r = x + y (one rounding to the dtype, as `add`;
//! HF adds the residual in the model's dtype), normed = rmsnorm(r)·w (as `rmsnorm`). Between a
//! layer's projections and the next GEMM this is one pass over the rows instead of two.

use super::{check_float, check_same, check_shape};
use crate::{Device, Result, Tensor};

/// The outputs of [`add_rmsnorm`]: the new residual stream r[N,C], the normalised rows out[N,C]
/// (both in x's dtype) and rstd[N] F32 (what `rmsnorm_backward` needs with r).
pub struct AddNorm {
    pub r: Tensor,
    pub out: Tensor,
    pub rstd: Tensor,
}

/// x[N,C], y[N,C], w[C] (one dtype and device) -> r = x + y, out = w · (r · rstd),
/// rstd = 1 / sqrt(mean(r²) + eps) over the rounded r.
pub fn add_rmsnorm(x: &Tensor, y: &Tensor, w: &Tensor, eps: f32) -> Result<AddNorm> {
    const OP: &str = "add_rmsnorm";
    check_float(OP, x)?;
    let (n, c) = x.dims2(OP)?;
    check_same(OP, x, &[y, w])?;
    check_shape(OP, "y", y, &[n, c])?;
    check_shape(OP, "weight w", w, &[c])?;
    match x.device() {
        Device::Cpu => crate::cpu::add_rmsnorm::add_rmsnorm(x, y, w, eps),
        Device::Cuda(_) => crate::cuda::add_rmsnorm::add_rmsnorm(x, y, w, eps),
    }
}
