//! KV-cache writes and block copies on the GPU (`cu/kv_cache.cu`), plus the free-memory query the
//! rollout engine sizes its cache pool from.

use super::launch::{kernel_source, run, Args, Grid, KernelSource};
use super::{cuda_err, device_of, suffix, CudaDevice};
use crate::{Error, Result, Tensor};

const SRC: KernelSource = kernel_source!("kv_cache");

/// The kernel source, for compile tests.
pub fn source() -> KernelSource {
    kernel_source!("kv_cache")
}

fn u32_of(op: &'static str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::msg(format!("{op}: size {v} exceeds u32")))
}

pub fn kv_cache_write(
    k_cache: &mut Tensor,
    v_cache: &mut Tensor,
    k: &Tensor,
    v: &Tensor,
    slots: &Tensor,
) -> Result<()> {
    const OP: &str = "kv_cache_write";
    let dev = device_of(k, OP)?;
    let (p, kh, d) = k_cache.dims3(OP)?;
    let n = k.shape()[0];
    let args = Args::new()
        .ptr(k, &dev, OP)?
        .ptr(v, &dev, OP)?
        .ptr(slots, &dev, OP)?
        .ptr(k_cache, &dev, OP)?
        .ptr(v_cache, &dev, OP)?
        .u32(u32_of(OP, n)?)
        .u32(u32_of(OP, kh * d)?)
        .u32(u32_of(OP, p)?);
    let func = format!("kv_cache_write_{}", suffix(k.dtype(), OP)?);
    run(&dev, &SRC, &[], &func, Grid::cover(n * kh * d, 256), args)
}

pub fn kv_cache_copy_blocks(
    k_cache: &mut Tensor,
    v_cache: &mut Tensor,
    src: &Tensor,
    dst: &Tensor,
    block_size: usize,
) -> Result<()> {
    const OP: &str = "kv_cache_copy_blocks";
    let dev = device_of(k_cache, OP)?;
    let (p, kh, d) = k_cache.dims3(OP)?;
    let pairs = src.numel();
    let block_elems = block_size * kh * d;
    let args = Args::new()
        .ptr(k_cache, &dev, OP)?
        .ptr(v_cache, &dev, OP)?
        .ptr(src, &dev, OP)?
        .ptr(dst, &dev, OP)?
        .u32(u32_of(OP, pairs)?)
        .u32(u32_of(OP, block_elems)?)
        .u32(u32_of(OP, p / block_size)?);
    let func = format!("kv_cache_copy_blocks_{}", suffix(k_cache.dtype(), OP)?);
    run(
        &dev,
        &SRC,
        &[],
        &func,
        Grid::cover(pairs * block_elems, 256),
        args,
    )
}

/// (free, total) bytes of device memory on `dev`, as the driver reports them after the memory
/// pool's cached free memory went back to the driver (otherwise memory this process freed, e.g. a
/// previous rollout's KV cache, would count as used).
pub fn memory_info(dev: &CudaDevice) -> Result<(usize, usize)> {
    dev.trim_pool()?;
    dev.context().bind_to_thread().map_err(cuda_err)?;
    cudarc::driver::result::mem_get_info().map_err(cuda_err)
}
