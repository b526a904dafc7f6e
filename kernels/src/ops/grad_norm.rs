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
