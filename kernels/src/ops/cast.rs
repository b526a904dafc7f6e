//! cast: f32 <-> bf16 (round to nearest even). Same dtype in and out is a copy.

use crate::{DType, Device, Error, Result, Tensor};

/// `x` converted to `dtype` (F32 or BF16), same shape and device.
pub fn cast(x: &Tensor, dtype: DType) -> Result<Tensor> {
    const OP: &str = "cast";
    super::check_float(OP, x)?;
    if !dtype.is_float() {
        return Err(Error::DType { op: OP, dtype });
    }
    match x.device() {
        Device::Cpu => crate::cpu::cast::cast(x, dtype),
        Device::Cuda(_) => crate::cuda::cast::cast(x, dtype),
    }
}
