//! One host-to-device upload per step for many small inputs (a decode step's tokens, positions,
//! slots, context lengths, sampling specs and block tables).
//!
//! Each separate upload from pageable memory costs the driver a staging copy and a call (a few µs
//! each, paid on the host while the GPU idles between steps). Here the caller packs every input into
//! one pinned host buffer, [`Staging::send`] copies it to one device buffer with a single async
//! copy, and [`Staging::scatter`] fills each consumer tensor from its range of that buffer with a
//! device-to-device copy. Those copies are ordinary stream work, so they can be recorded into a
//! CUDA graph together with the kernels that read the tensors.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, PinnedHostSlice};

use super::{cuda_err, CudaDevice, CudaStorage};
use crate::{Error, Result, Storage, Tensor};

/// A pinned host buffer and a device buffer of `len` u32 each.
pub struct Staging {
    host: PinnedHostSlice<u32>,
    dev: CudaSlice<u32>,
    stream: Arc<CudaStream>,
}

impl Staging {
    pub fn new(device: &CudaDevice, len: usize) -> Result<Staging> {
        let len = len.max(1);
        // SAFETY: u32 is valid for any bits; the buffer is written before each send.
        let host = unsafe { device.context().alloc_pinned::<u32>(len) }.map_err(cuda_err)?;
        let stream = device.stream().clone();
        let dev = stream.alloc_zeros::<u32>(len).map_err(cuda_err)?;
        Ok(Staging { host, dev, stream })
    }

    pub fn len(&self) -> usize {
        self.host.len()
    }

    pub fn is_empty(&self) -> bool {
        self.host.is_empty()
    }

    /// The host buffer to pack the next step's inputs into. Waits until the previous send has
    /// read it.
    pub fn host_mut(&mut self) -> Result<&mut [u32]> {
        self.host.as_mut_slice().map_err(cuda_err)
    }

    /// Queues the copy of the whole host buffer to the device buffer.
    pub fn send(&mut self) -> Result<()> {
        self.stream
            .memcpy_htod(&self.host, &mut self.dev)
            .map_err(cuda_err)
    }

    /// Queues `dst` ← device buffer [offset, offset + dst.numel()) (a device-to-device copy, which a
    /// CUDA graph can record).
    pub fn scatter(&self, offset: usize, dst: &mut Tensor) -> Result<()> {
        let n = dst.numel();
        if offset + n > self.dev.len() {
            return Err(Error::msg(format!(
                "staging: range {offset}..{} outside a buffer of {}",
                offset + n,
                self.dev.len()
            )));
        }
        match dst.storage_mut() {
            Storage::Cuda(CudaStorage::U32(d)) => {
                if n == 0 {
                    return Ok(());
                }
                let src = self.dev.slice(offset..offset + n);
                self.stream.memcpy_dtod(&src, d).map_err(cuda_err)
            }
            _ => Err(Error::msg("staging: the target is not a CUDA U32 tensor")),
        }
    }
}
