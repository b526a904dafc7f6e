//! concat_rows on the GPU: one stream-ordered device-to-device copy per part into its rows;
//! concat_cols: one strided 2-D copy per part into its columns; split_store: a copy per part, or
//! (adding) the `add_inplace` kernel on the part's block of the source.

use super::launch::{kernel_source, run, Args, Grid, KernelSource};
use super::{cuda_err, device_of, empty, ptr, CudaDevice};
use crate::ops::GradStore;
use crate::{DType, Error, Result, Tensor};

pub fn concat_rows(parts: &[&Tensor], shape: &[usize]) -> Result<Tensor> {
    const OP: &str = "concat_rows";
    let dev = device_of(parts[0], OP)?;
    let out = empty(&dev, shape, parts[0].dtype())?;
    let base = ptr(&out, &dev, OP)?;
    let elem = out.dtype().size_in_bytes();
    dev.context().bind_to_thread().map_err(cuda_err)?;
    let mut offset = 0u64;
    for t in parts {
        let bytes = t.numel() * elem;
        if bytes > 0 {
            let src = ptr(t, &dev, OP)?;
            // SAFETY: both buffers live on `dev` and are at least this long (shapes checked by
            // the op; `out` holds every part's rows); the copy is queued on the stream they were
            // allocated on, behind the work that wrote `src`.
            unsafe {
                cudarc::driver::result::memcpy_dtod_async(
                    base + offset,
                    src,
                    bytes,
                    dev.stream().cu_stream(),
                )
            }
            .map_err(|e| Error::Cuda(format!("{OP}: device copy of {bytes} bytes: {e:?}")))?;
        }
        offset += bytes as u64;
    }
    Ok(out)
}

pub fn write_rows(dst: &mut Tensor, offset: usize, src: &Tensor) -> Result<()> {
    const OP: &str = "write_rows";
    let dev = device_of(dst, OP)?;
    let elem = src.dtype().size_in_bytes();
    let bytes = src.numel() * elem;
    if bytes == 0 {
        return Ok(());
    }
    let base = ptr(dst, &dev, OP)?;
    let from = ptr(src, &dev, OP)?;
    dev.context().bind_to_thread().map_err(cuda_err)?;
    // SAFETY: src's `bytes` fit dst from element `offset` (checked by the op); queued on the
    // device's current stream, behind the work that wrote src.
    unsafe {
        cudarc::driver::result::memcpy_dtod_async(
            base + (offset * elem) as u64,
            from,
            bytes,
            dev.stream().cu_stream(),
        )
    }
    .map_err(|e| Error::Cuda(format!("{OP}: device copy of {bytes} bytes: {e:?}")))
}

pub fn concat_cols(parts: &[&Tensor], n: usize, width: usize) -> Result<Tensor> {
    const OP: &str = "concat_cols";
    let dev = device_of(parts[0], OP)?;
    let out = empty(&dev, &[n, width], parts[0].dtype())?;
    let elem = out.dtype().size_in_bytes();
    let base = ptr(&out, &dev, OP)?;
    dev.context().bind_to_thread().map_err(cuda_err)?;
    let mut col = 0usize;
    for t in parts {
        let w = t.shape()[1];
        if w > 0 && n > 0 {
            use cudarc::driver::sys;
            let copy = sys::CUDA_MEMCPY2D_st {
                srcXInBytes: 0,
                srcY: 0,
                srcMemoryType: sys::CUmemorytype::CU_MEMORYTYPE_DEVICE,
                srcHost: std::ptr::null(),
                srcDevice: ptr(t, &dev, OP)?,
                srcArray: std::ptr::null_mut(),
                srcPitch: w * elem,
                dstXInBytes: col * elem,
                dstY: 0,
                dstMemoryType: sys::CUmemorytype::CU_MEMORYTYPE_DEVICE,
                dstHost: std::ptr::null_mut(),
                dstDevice: base,
                dstArray: std::ptr::null_mut(),
                dstPitch: width * elem,
                WidthInBytes: w * elem,
                Height: n,
            };
            // SAFETY: source [n, w] and destination [n, width] live on `dev` with the pitches
            // given (w ≤ width - col, checked by the op's shapes); queued on their stream.
            unsafe { sys::cuMemcpy2DAsync_v2(&copy, dev.stream().cu_stream()) }
                .result()
                .map_err(|e| Error::Cuda(format!("{OP}: 2-D copy of part [{n}, {w}]: {e:?}")))?;
        }
        col += w;
    }
    Ok(out)
}

const ELEMENTWISE: KernelSource = kernel_source!("elementwise");

pub fn split_store(src: &Tensor, parts: &mut [&mut Tensor], store: GradStore) -> Result<()> {
    const OP: &str = "split_store";
    let dev = device_of(src, OP)?;
    let base = ptr(src, &dev, OP)?;
    let mut offset = 0usize; // elements of src
    for t in parts.iter_mut() {
        let len = t.numel();
        if len > 0 {
            let block = base + (offset * 4) as u64;
            match store {
                GradStore::Overwrite => copy(&dev, ptr(t, &dev, OP)?, block, len * 4)?,
                // add_inplace reads 8 f32 (two 16-byte words) at a time: a block that starts off
                // that alignment is copied to an aligned buffer first.
                GradStore::Add if offset.is_multiple_of(4) => add(&dev, t, block, len)?,
                GradStore::Add => {
                    let tmp = empty(&dev, t.shape(), DType::F32)?;
                    copy(&dev, ptr(&tmp, &dev, OP)?, block, len * 4)?;
                    super::elementwise::add_inplace(t, &tmp)?;
                }
            }
        }
        offset += len;
    }
    Ok(())
}

fn copy(dev: &CudaDevice, dst: u64, src: u64, bytes: usize) -> Result<()> {
    dev.context().bind_to_thread().map_err(cuda_err)?;
    // SAFETY: both ranges are `bytes` long inside live buffers on `dev` (sizes checked by the op);
    // queued on their stream.
    unsafe { cudarc::driver::result::memcpy_dtod_async(dst, src, bytes, dev.stream().cu_stream()) }
        .map_err(|e| Error::Cuda(format!("split_store: device copy of {bytes} bytes: {e:?}")))
}

fn add(dev: &CudaDevice, dst: &mut Tensor, src: u64, len: usize) -> Result<()> {
    const OP: &str = "split_store";
    let args = Args::new().ptr(dst, dev, OP)?.raw(src).u64(len as u64);
    run(
        dev,
        &ELEMENTWISE,
        &[],
        "add_inplace_f32",
        Grid::cover(len.div_ceil(8), 256),
        args,
    )
}
