//! CUDA backend: one GPU's context and stream, device storage, and (in `cuda/<op>.rs`) the ops.
//!
//! Everything CUDA is loaded at run time (`cudarc` with `dynamic-loading`), so this crate builds and
//! its CPU tests run on machines with no CUDA at all; [`CudaDevice::new`] then fails cleanly.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaSlice, CudaStream};
use half::bf16;

use crate::{DType, Error, Result, Storage};

/// True when the CUDA driver library can be loaded and reports at least one GPU.
pub fn is_available() -> bool {
    // SAFETY: only probes whether the shared library can be opened.
    let present = unsafe { cudarc::driver::sys::is_culib_present() };
    if !present {
        return false;
    }
    std::panic::catch_unwind(|| {
        cudarc::driver::result::init().is_ok()
            && cudarc::driver::result::device::get_count().is_ok_and(|n| n > 0)
    })
    .unwrap_or(false)
}

fn cuda_err(e: impl std::fmt::Debug) -> Error {
    Error::Cuda(format!("{e:?}"))
}

/// One GPU: its primary context and the stream all realign work is queued on.
#[derive(Clone)]
pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
}

impl CudaDevice {
    pub fn new(ordinal: usize) -> Result<CudaDevice> {
        if !is_available() {
            return Err(Error::Cuda(
                "no CUDA driver or GPU found on this machine (use --device cpu)".into(),
            ));
        }
        let ctx = CudaContext::new(ordinal).map_err(cuda_err)?;
        let stream = ctx.default_stream();
        Ok(CudaDevice { ctx, stream })
    }

    pub fn ordinal(&self) -> usize {
        self.ctx.ordinal()
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(cuda_err)
    }

    pub fn zeros(&self, dtype: DType, n: usize) -> Result<CudaStorage> {
        let s = &self.stream;
        Ok(match dtype {
            DType::F32 => CudaStorage::F32(s.alloc_zeros::<f32>(n).map_err(cuda_err)?),
            DType::BF16 => CudaStorage::BF16(s.alloc_zeros::<bf16>(n).map_err(cuda_err)?),
            DType::U32 => CudaStorage::U32(s.alloc_zeros::<u32>(n).map_err(cuda_err)?),
        })
    }

    /// Host storage to device storage (same dtype).
    pub fn upload(&self, host: &Storage) -> Result<CudaStorage> {
        let s = &self.stream;
        Ok(match host {
            Storage::CpuF32(v) => CudaStorage::F32(s.clone_htod(v).map_err(cuda_err)?),
            Storage::CpuBF16(v) => CudaStorage::BF16(s.clone_htod(v).map_err(cuda_err)?),
            Storage::CpuU32(v) => CudaStorage::U32(s.clone_htod(v).map_err(cuda_err)?),
            Storage::Cuda(c) => self.copy_from(c)?,
        })
    }

    /// Device-to-device copy onto this device's stream.
    pub fn copy_from(&self, src: &CudaStorage) -> Result<CudaStorage> {
        let s = &self.stream;
        Ok(match src {
            CudaStorage::F32(x) => CudaStorage::F32(s.clone_dtod(x).map_err(cuda_err)?),
            CudaStorage::BF16(x) => CudaStorage::BF16(s.clone_dtod(x).map_err(cuda_err)?),
            CudaStorage::U32(x) => CudaStorage::U32(s.clone_dtod(x).map_err(cuda_err)?),
        })
    }
}

/// Device memory of one tensor.
pub enum CudaStorage {
    F32(CudaSlice<f32>),
    BF16(CudaSlice<bf16>),
    U32(CudaSlice<u32>),
}

impl CudaStorage {
    pub fn dtype(&self) -> DType {
        match self {
            CudaStorage::F32(_) => DType::F32,
            CudaStorage::BF16(_) => DType::BF16,
            CudaStorage::U32(_) => DType::U32,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            CudaStorage::F32(x) => x.len(),
            CudaStorage::BF16(x) => x.len(),
            CudaStorage::U32(x) => x.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn try_clone(&self) -> Result<CudaStorage> {
        let stream = match self {
            CudaStorage::F32(x) => x.stream().clone(),
            CudaStorage::BF16(x) => x.stream().clone(),
            CudaStorage::U32(x) => x.stream().clone(),
        };
        Ok(match self {
            CudaStorage::F32(x) => CudaStorage::F32(stream.clone_dtod(x).map_err(cuda_err)?),
            CudaStorage::BF16(x) => CudaStorage::BF16(stream.clone_dtod(x).map_err(cuda_err)?),
            CudaStorage::U32(x) => CudaStorage::U32(stream.clone_dtod(x).map_err(cuda_err)?),
        })
    }

    pub fn to_host(&self) -> Result<Storage> {
        Ok(match self {
            CudaStorage::F32(x) => Storage::CpuF32(x.stream().clone_dtoh(x).map_err(cuda_err)?),
            CudaStorage::BF16(x) => {
                Storage::CpuBF16(x.stream().clone_dtoh(x).map_err(cuda_err)?)
            }
            CudaStorage::U32(x) => Storage::CpuU32(x.stream().clone_dtoh(x).map_err(cuda_err)?),
        })
    }
}
