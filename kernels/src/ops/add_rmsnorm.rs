//! Residual add fused with the RMSNorm after it: r = x + y (one rounding to the dtype, as `add`;
//! HF adds the residual in the model's dtype), normed = rmsnorm(r)·w (as `rmsnorm`). Between a
//! layer's projections and the next GEMM this is one pass over the rows instead of two.

use super::{check_float, check_same, check_shape};
use crate::{DType, Device, Error, Result, Tensor};

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

/// [`add_rmsnorm`] with y given as partial products p[S,N,C] f32 (e.g. `linear_ksplit`'s):
/// y = Σ_s p[s], summed in order s = 0..S-1 in f32 and rounded once to x's dtype (what a GEMM
/// writing y in that dtype does), then r = x + y and out = rmsnorm(r)·w as there. On the GPU,
/// C must be a multiple of 8 and at most 8192 (a block per row, 8 values per thread).
pub fn add_rmsnorm_partials(x: &Tensor, p: &Tensor, w: &Tensor, eps: f32) -> Result<AddNorm> {
    const OP: &str = "add_rmsnorm_partials";
    check_float(OP, x)?;
    let (n, c) = x.dims2(OP)?;
    check_same(OP, x, &[w])?;
    check_shape(OP, "weight w", w, &[c])?;
    x.check_same_device(p, OP)?;
    if p.dtype() != DType::F32 || p.rank() != 3 || p.shape()[1..] != [n, c] || p.shape()[0] == 0 {
        return Err(Error::shape(
            OP,
            format!(
                "partials p must be f32 [S, {n}, {c}] with S >= 1, got {} {:?}",
                p.dtype(),
                p.shape()
            ),
        ));
    }
    match x.device() {
        Device::Cpu => crate::cpu::add_rmsnorm::add_rmsnorm_partials(x, p, w, eps),
        Device::Cuda(_) => {
            if !c.is_multiple_of(8) || c > 8192 {
                return Err(Error::msg(format!(
                    "{OP}: the GPU kernel takes rows of a multiple of 8 up to 8192 values, got {c}"
                )));
            }
            crate::cuda::add_rmsnorm::add_rmsnorm_partials(x, p, w, eps)
        }
    }
}
