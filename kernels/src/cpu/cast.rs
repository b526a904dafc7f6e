//! f32 <-> bf16 conversion on the host. `half` rounds to nearest even (NaN stays NaN).

use half::bf16;

use crate::{DType, Device, Error, Result, Storage, Tensor};

pub fn cast(x: &Tensor, dtype: DType) -> Result<Tensor> {
    let storage = match (x.storage(), dtype) {
        (Storage::CpuF32(v), DType::F32) => Storage::CpuF32(v.clone()),
        (Storage::CpuBF16(v), DType::BF16) => Storage::CpuBF16(v.clone()),
        (Storage::CpuF32(v), DType::BF16) => Storage::CpuBF16(f32_to_bf16(v)),
        (Storage::CpuBF16(v), DType::F32) => {
            Storage::CpuF32(v.iter().map(|x| x.to_f32()).collect())
        }
        _ => {
            return Err(Error::msg(format!(
                "cast: cannot convert {} on {} to {dtype}",
                x.dtype(),
                x.device()
            )))
        }
    };
    Tensor::from_storage(storage, x.shape(), Device::Cpu)
}

/// Round-to-nearest-even conversion of a slice.
pub fn f32_to_bf16(x: &[f32]) -> Vec<bf16> {
    x.iter().map(|&v| bf16::from_f32(v)).collect()
}
