//! concat_rows on the host: the parts' data one after the other (any dtype); concat_cols (f32:
//! the CPU computes in f32) row by row; split_store block by block.

use super::{f32s, f32s_mut};
use crate::ops::GradStore;
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

/// src's elements into dst's from element `offset` (same dtype, checked by the op).
pub fn write_rows(dst: &mut Tensor, offset: usize, src: &Tensor) -> Result<()> {
    fn put<T: Copy>(d: &mut [T], offset: usize, s: &[T]) {
        d[offset..offset + s.len()].copy_from_slice(s);
    }
    match (dst.storage_mut(), src.storage()) {
        (Storage::CpuF32(d), Storage::CpuF32(s)) => put(d, offset, s),
        (Storage::CpuBF16(d), Storage::CpuBF16(s)) => put(d, offset, s),
        (Storage::CpuU32(d), Storage::CpuU32(s)) => put(d, offset, s),
        _ => return Err(Error::msg("write_rows: expected cpu tensors of one dtype")),
    }
    Ok(())
}

pub fn concat_cols(parts: &[&Tensor], n: usize, width: usize) -> Result<Tensor> {
    const OP: &str = "concat_cols";
    let mut out = vec![0.0f32; n * width];
    let mut col = 0;
    for t in parts {
        let (src, w) = (f32s(OP, t)?, t.shape()[1]);
        for (r, row) in src.chunks_exact(w.max(1)).enumerate().take(n) {
            out[r * width + col..r * width + col + w].copy_from_slice(row);
        }
        col += w;
    }
    super::tensor(out, &[n, width])
}

pub fn split_store(src: &Tensor, parts: &mut [&mut Tensor], store: GradStore) -> Result<()> {
    const OP: &str = "split_store";
    let mut rest = f32s(OP, src)?;
    for t in parts.iter_mut() {
        let (block, tail) = rest.split_at(t.numel());
        let dst = f32s_mut(OP, t)?;
        match store {
            GradStore::Overwrite => dst.copy_from_slice(block),
            GradStore::Add => dst.iter_mut().zip(block).for_each(|(d, s)| *d += s),
        }
        rest = tail;
    }
    Ok(())
}
