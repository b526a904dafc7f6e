//! concat_rows on the GPU: one stream-ordered device-to-device copy per part into its rows.

use super::{cuda_err, device_of, empty, ptr};
use crate::{Error, Result, Tensor};

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
