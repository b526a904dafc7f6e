//! `linear_backward_acc`: the backward of `linear` with dx added onto an existing gradient
//! instead of returned, for inputs that feed several linears (q/k/v read one normalised x,
//! gate/up another): d(x) is the sum of their dx, accumulated by the GEMMs themselves (beta = 1)
//! instead of a separate `add_inplace` pass per extra linear.
//!
//! Values: in f32 the same as `linear_backward` + `add_inplace`; in bf16 cuBLAS rounds each
//! product to bf16 before adding it to the bf16 accumulator, which is what `linear_backward`
//! (bf16 dx) followed by `add_inplace` (one more rounding) computes too.

use super::linear::check_weight_grads;
use super::{check_float, check_same, check_shape, GradStore};
use crate::{Device, Result, Tensor};

/// dx_acc[N,I] += dy[N,O] · w[O,I];  dw[O,I] (+)= dyᵀ · x as `store` says;  db[O] += Σ_n dy[n]
/// (dw, db F32).
pub fn linear_backward_acc(
    dy: &Tensor,
    x: &Tensor,
    w: &Tensor,
    dw: &mut Tensor,
    db: Option<&mut Tensor>,
    store: GradStore,
    dx_acc: &mut Tensor,
) -> Result<()> {
    const OP: &str = "linear_backward_acc";
    check_float(OP, x)?;
    let (n, i) = x.dims2(OP)?;
    let (o, _) = w.dims2(OP)?;
    check_same(OP, x, &[w, dy, dx_acc])?;
    check_shape(OP, "w", w, &[o, i])?;
    check_shape(OP, "dy", dy, &[n, o])?;
    check_shape(OP, "dx_acc", dx_acc, &[n, i])?;
    check_weight_grads(OP, x, dw, db.as_deref(), o, i)?;
    match x.device() {
        Device::Cpu => {
            let dx = crate::cpu::linear::linear_backward(dy, x, w, dw, db, store)?;
            super::add_inplace(dx_acc, &dx)
        }
        Device::Cuda(_) => {
            crate::cuda::linear::linear_backward_acc(dy, x, w, dw, db, store, dx_acc)
        }
    }
}
