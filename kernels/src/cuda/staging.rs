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

use cudarc::driver::{CudaEvent, CudaSlice, CudaStream, PinnedHostSlice};

use super::{cuda_err, CudaDevice, CudaStorage};
use crate::{Error, Result, Storage, Tensor};

/// A pinned host buffer and a device buffer of `len` u32 each.
pub struct Staging {
    host: PinnedHostSlice<u32>,
    dev: CudaSlice<u32>,
    stream: Arc<CudaStream>,
    /// Recorded behind each send. The device turns cudarc's event tracking off
    /// (`CudaDevice::new`), so the pinned buffer's own event is never recorded and cannot say
    /// whether a queued copy has read the buffer yet; this one can.
    sent: CudaEvent,
}

impl Staging {
    pub fn new(device: &CudaDevice, len: usize) -> Result<Staging> {
        let len = len.max(1);
        // SAFETY: u32 is valid for any bits; the buffer is written before each send.
        let host = unsafe { device.context().alloc_pinned::<u32>(len) }.map_err(cuda_err)?;
        let stream = device.stream().clone();
        let dev = stream.alloc_zeros::<u32>(len).map_err(cuda_err)?;
        let sent = device.context().new_event(None).map_err(cuda_err)?;
        Ok(Staging {
            host,
            dev,
            stream,
            sent,
        })
    }

    pub fn len(&self) -> usize {
        self.host.len()
    }

    pub fn is_empty(&self) -> bool {
        self.host.is_empty()
    }

    /// The host buffer to pack the next step's inputs into. Waits until the previous send has
    /// read it: a send queued behind a running step copies when the device reaches it, and
    /// packing the next step before then would hand the queued step the next one's inputs (the
    /// overlapped decode loop packs step N + 1 while step N may still be queued).
    pub fn host_mut(&mut self) -> Result<&mut [u32]> {
        self.sent.synchronize().map_err(cuda_err)?;
        self.host.as_mut_slice().map_err(cuda_err)
    }

    /// Queues the copy of the whole host buffer to the device buffer.
    pub fn send(&mut self) -> Result<()> {
        self.stream
            .memcpy_htod(&self.host, &mut self.dev)
            .map_err(cuda_err)?;
        self.sent.record(&self.stream).map_err(cuda_err)
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

/// The way back: a pinned host buffer that receives a small U32 tensor (a decode step's sampled
/// tokens and log-probs) with an async copy queued behind the work that computes it, so the host
/// can queue more work before it waits for these values. Not write-combined: the host reads it.
pub struct Readback {
    host: PinnedHostSlice<u32>,
    stream: Arc<CudaStream>,
    /// Recorded behind each fetch. The pinned buffer's own event blocks the thread in the OS
    /// when waited on; this one waits as a stream synchronise does (spinning while there are
    /// idle cores), so a wait costs no scheduler wake-up.
    done: CudaEvent,
    /// Values the last fetch copies.
    len: usize,
}

impl Readback {
    /// Room for `cap` u32 values.
    pub fn new(device: &CudaDevice, cap: usize) -> Result<Readback> {
        // SAFETY: u32 is valid for any bits; only the part a fetch wrote is read.
        let host = unsafe {
            device
                .context()
                .alloc_pinned_with_flags::<u32>(cap.max(1), 0)
        }
        .map_err(cuda_err)?;
        let done = device.context().new_event(None).map_err(cuda_err)?;
        Ok(Readback {
            host,
            stream: device.stream().clone(),
            done,
            len: 0,
        })
    }

    pub fn capacity(&self) -> usize {
        self.host.len()
    }

    /// Queues the copy of `src` (a CUDA U32 tensor of at most `capacity` values) on the stream;
    /// [`Readback::wait`] returns it. Returns at once; the values of an earlier fetch are gone.
    pub fn fetch(&mut self, src: &Tensor) -> Result<()> {
        let n = src.numel();
        if n > self.host.len() {
            return Err(Error::msg(format!(
                "readback: {n} values do not fit a buffer of {}",
                self.host.len()
            )));
        }
        self.len = n;
        if n == 0 {
            return Ok(());
        }
        match src.storage() {
            Storage::Cuda(CudaStorage::U32(s)) => {
                // cudarc's memcpy_dtoh copies size_of_val(dst) bytes: handing it the whole pinned
                // buffer reads past a smaller source (CUDA_ERROR_INVALID_VALUE). Copy exactly n.
                if s.len() < n {
                    return Err(Error::msg(format!(
                        "readback: a tensor of {n} values over a buffer of {}",
                        s.len()
                    )));
                }
                let src = s.slice(0..n);
                let host = self.host.as_mut_slice().map_err(cuda_err)?;
                self.stream
                    .memcpy_dtoh(&src, &mut host[..n])
                    .map_err(cuda_err)?;
                self.done.record(&self.stream).map_err(cuda_err)
            }
            _ => Err(Error::msg("readback: the source is not a CUDA U32 tensor")),
        }
    }

    /// Blocks until the last fetch's copy has landed (that work and everything queued before
    /// it, not what was queued after) and returns its values.
    pub fn wait(&self) -> Result<&[u32]> {
        self.done.synchronize().map_err(cuda_err)?;
        Ok(&self.host.as_slice().map_err(cuda_err)?[..self.len])
    }
}
