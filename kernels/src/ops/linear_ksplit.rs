//! linear_ksplit: the bias-free product x[N,I] · w[O,I]ᵀ as S partial products over S equal
//! slices of the inner dimension, p[s] = x[:, s·I/S .. (s+1)·I/S] · w[:, same]ᵀ, each [N,O] in f32.
//!
//! Why: a skinny product (the decode step's down projection: 256 rows, I = 4864, O = 896) has too
//! few output tiles to fill the GPU, so cuBLAS splits I itself and sums the partials in a separate
//! reduce kernel before the next op (the residual add + RMSNorm) reads the result. Handing out the
//! partials lets that next op do the sum (`add_rmsnorm_partials`): one kernel fewer per layer.

use crate::{Device, Error, Result, Tensor};

/// x[N,I], w[O,I] (one float dtype and device), `splits` S dividing I into slices of a multiple
/// of 8 elements (16-byte aligned bf16 rows on the GPU) -> p[S,N,O] f32 with Σ_s p[s] = x · wᵀ.
pub fn linear_ksplit(x: &Tensor, w: &Tensor, splits: usize) -> Result<Tensor> {
    const OP: &str = "linear_ksplit";
    let (_n, i, _o) = super::linear::check_operands(OP, x, w)?;
    if splits == 0 || !i.is_multiple_of(splits) || !(i / splits).is_multiple_of(8) {
        return Err(Error::msg(format!(
            "{OP}: {splits} splits of the inner size {i}: need a split count that divides it \
             into slices of a multiple of 8"
        )));
    }
    match x.device() {
        Device::Cpu => crate::cpu::linear_ksplit::linear_ksplit(x, w, splits),
        Device::Cuda(_) => crate::cuda::linear_ksplit::linear_ksplit(x, w, splits),
    }
}
