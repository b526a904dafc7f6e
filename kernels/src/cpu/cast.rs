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

/// y[N,O] + b[O] in f32 (the CPU computes in f32 only: a BF16 b is an `Error::DType`).
pub fn bias_cast(y: &Tensor, b: &Tensor) -> Result<Tensor> {
    const OP: &str = "bias_cast";
    let (_n, o) = y.dims2(OP)?;
    let (ys, bs) = (super::f32s(OP, y)?, super::f32s(OP, b)?);
    let out: Vec<f32> = ys
        .chunks_exact(o.max(1))
        .flat_map(|row| row.iter().zip(bs).map(|(a, b)| a + b))
        .collect();
    super::tensor(out, y.shape())
}
