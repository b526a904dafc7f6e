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

/// y[N,O] F32 (e.g. a GEMM's unrounded output) plus bias b[O] of dtype `dtype` (F32 or BF16),
/// added in f32 and rounded once to `dtype`: `linear`'s bias epilogue for a product computed with
/// an f32 output, without the f32 bias fill and read-modify-write of the GEMM's output.
pub fn bias_cast(y: &Tensor, b: &Tensor, dtype: DType) -> Result<Tensor> {
    const OP: &str = "bias_cast";
    super::check_dtype(OP, y, DType::F32)?;
    let (_n, o) = y.dims2(OP)?;
    super::check_dtype(OP, b, dtype)?;
    y.check_same_device(b, OP)?;
    super::check_shape(OP, "bias b", b, &[o])?;
    match y.device() {
        Device::Cpu => crate::cpu::cast::bias_cast(y, b),
        Device::Cuda(_) => crate::cuda::cast::bias_cast(y, b, dtype),
    }
}
