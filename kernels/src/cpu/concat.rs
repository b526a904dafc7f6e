//! concat_rows on the host: the parts' data one after the other (any dtype).

use crate::{Device, Error, Result, Storage, Tensor};

pub fn concat_rows(parts: &[&Tensor], shape: &[usize]) -> Result<Tensor> {
    fn join<T: Copy>(
        parts: &[&Tensor],
        get: impl Fn(&Storage) -> Option<&Vec<T>>,
    ) -> Result<Vec<T>> {
        let mut out = Vec::new();
        for t in parts {
            let v = get(t.storage())
                .ok_or_else(|| Error::msg("concat_rows: expected cpu tensors of one dtype"))?;
            out.extend_from_slice(v);
        }
        Ok(out)
    }
    let storage = match parts[0].storage() {
        Storage::CpuF32(_) => Storage::CpuF32(join(parts, |s| match s {
            Storage::CpuF32(v) => Some(v),
            _ => None,
        })?),
        Storage::CpuBF16(_) => Storage::CpuBF16(join(parts, |s| match s {
            Storage::CpuBF16(v) => Some(v),
            _ => None,
        })?),
        Storage::CpuU32(_) => Storage::CpuU32(join(parts, |s| match s {
            Storage::CpuU32(v) => Some(v),
            _ => None,
        })?),
        Storage::Cuda(_) => return Err(Error::msg("concat_rows: expected cpu tensors")),
    };
    Tensor::from_storage(storage, shape, Device::Cpu)
}
