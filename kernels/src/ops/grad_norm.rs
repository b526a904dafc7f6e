//! Sum of squares of a tensor, for the global gradient norm: norm = sqrt(Σ over tensors of
//! sum_squares). Clipping then is `scale_inplace(grad, max_norm / norm)`.

use super::check_float;
use crate::{Device, Result, Tensor};

/// Σ x² as a host f64 (accumulated in f64 on the CPU).
pub fn sum_squares(x: &Tensor) -> Result<f64> {
    const OP: &str = "sum_squares";
    check_float(OP, x)?;
    match x.device() {
        Device::Cpu => crate::cpu::grad_norm::sum_squares(x),
        Device::Cuda(_) => crate::cuda::sum_squares::sum_squares(x),
    }
}

/// [`sum_squares`] of each tensor of `xs`, in order. On the GPU every sum lands in one device
/// buffer that is read back once (one synchronisation for all tensors, not one per tensor); the
/// values are the same as calling [`sum_squares`] on each.
pub fn sum_squares_each(xs: &[&Tensor]) -> Result<Vec<f64>> {
    const OP: &str = "sum_squares";
    for x in xs {
        check_float(OP, x)?;
    }
    let on_one_gpu = match xs.first().map(|x| x.device()) {
        Some(d @ Device::Cuda(_)) => xs.iter().all(|x| x.device().same(d)),
        _ => false,
    };
    if on_one_gpu {
        crate::cuda::sum_squares::sum_squares_each(xs)
    } else {
        xs.iter().map(|x| sum_squares(x)).collect()
    }
}
