//! Op variants for work recorded into a CUDA graph ([`super::CudaDevice::capture`]), where nothing
//! may read device memory back to the host.
//!
//! `ops::gather_rows` copies its ids to the host to check them (a clear error instead of an
//! out-of-bounds read); during a capture that copy is not allowed and invalidates the capture. The
//! decode step of the rollout engine gathers token ids it has already checked (prompt ids against
//! the vocabulary before the rollout, sampled ids by construction), so it uses the unchecked
//! variant here.

use super::launch::{kernel_source, run, Args, Grid, KernelSource};
use super::{device_of, empty, suffix};
use crate::{DType, Error, Result, Tensor};

const EMBEDDING: KernelSource = kernel_source!("embedding");

fn u32_dim(op: &'static str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::msg(format!("{op}: dimension {v} exceeds u32")))
}

/// out[n] = table[idx[n]] for table [R, C] (F32 or BF16, on the GPU) and U32 idx [N], WITHOUT
/// checking the ids: every id must be < R (an id ≥ R reads out of bounds).
pub fn gather_rows_trusted(table: &Tensor, idx: &Tensor) -> Result<Tensor> {
    const OP: &str = "gather_rows_trusted";
    let dev = device_of(table, OP)?;
    let (_, c) = table.dims2(OP)?;
    if idx.dtype() != DType::U32 || idx.rank() != 1 {
        return Err(Error::shape(
            OP,
            "idx must be a rank-1 U32 tensor".to_string(),
        ));
    }
    table.check_same_device(idx, OP)?;
    let n = idx.numel();
    let out = empty(&dev, &[n, c], table.dtype())?;
    let args = Args::new()
        .ptr(table, &dev, OP)?
        .ptr(idx, &dev, OP)?
        .ptr(&out, &dev, OP)?
        .u32(u32_dim(OP, n)?)
        .u32(u32_dim(OP, c)?);
    let func = format!("gather_rows_{}", suffix(table.dtype(), OP)?);
    let blocks = n.clamp(1, 65535) as u32;
    run(&dev, &EMBEDDING, &[], &func, Grid::d1(blocks, 256), args)?;
    Ok(out)
}

/// Tag of a decode input token that the device takes from the previous step's sampled output:
/// `FROM_PREV | row` (see [`resolve_tokens`]). Token ids stay below 2^31.
pub const FROM_PREV: u32 = 1 << 31;

/// tokens[i] ← prev[row, 0] where tokens[i] = [`FROM_PREV`] | row, for tokens [N] U32 and prev
/// [R, 2] U32 (an earlier `sample_tokens` output: token, log-prob bits), in place and on the
/// device: the rollout engine's next decode step reads the tokens its previous step sampled
/// without a round trip through the host. Untagged ids are kept; a row ≥ R gives 0. Recordable
/// into a CUDA graph. CPU reference: [`resolve_tokens_host`].
pub fn resolve_tokens(tokens: &mut Tensor, prev: &Tensor) -> Result<()> {
    const OP: &str = "resolve_tokens";
    let dev = device_of(tokens, OP)?;
    let (r, c) = prev.dims2(OP)?;
    if tokens.dtype() != DType::U32 || tokens.rank() != 1 || prev.dtype() != DType::U32 || c != 2 {
        return Err(Error::shape(
            OP,
            format!(
                "tokens must be [N] U32 and prev [R, 2] U32, got {:?} {} and {:?} {}",
                tokens.shape(),
                tokens.dtype(),
                prev.shape(),
                prev.dtype()
            ),
        ));
    }
    tokens.check_same_device(prev, OP)?;
    let n = tokens.numel();
    if n == 0 {
        return Ok(());
    }
    let args = Args::new()
        .ptr(tokens, &dev, OP)?
        .ptr(prev, &dev, OP)?
        .u32(u32_dim(OP, n)?)
        .u32(u32_dim(OP, r)?);
    run(&dev, &EMBEDDING, &[], OP, Grid::cover(n, 256), args)
}

/// What [`resolve_tokens`] computes, on host slices: `prev` holds (token, log-prob) per row.
pub fn resolve_tokens_host(tokens: &mut [u32], prev: &[(u32, f32)]) {
    for t in tokens {
        if *t & FROM_PREV != 0 {
            *t = prev.get((*t & !FROM_PREV) as usize).map_or(0, |p| p.0);
        }
    }
}

/// dst[..src.numel()] ← src for U32 tensors on one GPU (a device-to-device copy, which a CUDA
/// graph can record): how a decode step leaves its samples where the next one reads them.
pub fn copy_u32_prefix(src: &Tensor, dst: &mut Tensor) -> Result<()> {
    use super::{cuda_err, CudaStorage};
    use crate::Storage;
    const OP: &str = "copy_u32_prefix";
    src.check_same_device(dst, OP)?;
    let n = src.numel();
    if n > dst.numel() {
        return Err(Error::msg(format!(
            "{OP}: {n} values do not fit a tensor of {}",
            dst.numel()
        )));
    }
    if n == 0 {
        return Ok(());
    }
    match (src.storage(), dst.storage_mut()) {
        (Storage::Cuda(CudaStorage::U32(s)), Storage::Cuda(CudaStorage::U32(d))) => {
            let stream = s.stream().clone();
            let mut d = d.slice_mut(0..n);
            stream.memcpy_dtod(s, &mut d).map_err(cuda_err)
        }
        _ => Err(Error::msg(format!("{OP}: both tensors must be CUDA U32"))),
    }
}
