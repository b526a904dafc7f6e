//! The paged KV cache's writes: new tokens' K/V into their slots, and whole-block copies (copy on
//! write of a block shared by several sequences).
//!
//! A cache is one tensor per layer and per K/V of shape [P, K, D]: P = blocks × block size slots,
//! slot = block · block_size + offset. Which slots a sequence owns is the rollout engine's business
//! (actor's block manager); these ops only move rows.

use super::{check_dtype, check_float, check_same, check_shape};
use crate::{DType, Device, Error, Result, Tensor};

/// k_cache[slots[n]] = k[n] and v_cache[slots[n]] = v[n] for every token n.
/// k_cache, v_cache: [P, K, D]; k, v: [N, K, D] (same dtype as the caches); slots: [N] U32.
/// Slots must be distinct and < P; on the GPU an out-of-range slot is skipped (checking it would
/// cost a device-to-host sync), on the CPU it is an error.
pub fn kv_cache_write(
    k_cache: &mut Tensor,
    v_cache: &mut Tensor,
    k: &Tensor,
    v: &Tensor,
    slots: &Tensor,
) -> Result<()> {
    const OP: &str = "kv_cache_write";
    check_float(OP, k_cache)?;
    check_same(OP, k_cache, &[v_cache, k, v])?;
    let (p, kh, d) = k_cache.dims3(OP)?;
    check_shape(OP, "v_cache", v_cache, &[p, kh, d])?;
    let (n, _, _) = k.dims3(OP)?;
    check_shape(OP, "k", k, &[n, kh, d])?;
    check_shape(OP, "v", v, &[n, kh, d])?;
    check_dtype(OP, slots, DType::U32)?;
    k.check_same_device(slots, OP)?;
    check_shape(OP, "slots", slots, &[n])?;
    match k.device() {
        Device::Cpu => crate::cpu::kv_cache::kv_cache_write(k_cache, v_cache, k, v, slots),
        Device::Cuda(_) => crate::cuda::kv_cache::kv_cache_write(k_cache, v_cache, k, v, slots),
    }
}

/// For each pair i, copies block src[i] onto block dst[i] in both caches ([P, K, D], P a multiple
/// of `block_size`). src, dst: [B] U32; blocks must be < P / block_size and no dst may be a src.
pub fn kv_cache_copy_blocks(
    k_cache: &mut Tensor,
    v_cache: &mut Tensor,
    src: &Tensor,
    dst: &Tensor,
    block_size: usize,
) -> Result<()> {
    const OP: &str = "kv_cache_copy_blocks";
    check_float(OP, k_cache)?;
    check_same(OP, k_cache, &[v_cache])?;
    let (p, kh, d) = k_cache.dims3(OP)?;
    check_shape(OP, "v_cache", v_cache, &[p, kh, d])?;
    if block_size == 0 || p % block_size != 0 {
        return Err(Error::shape(
            OP,
            format!("cache of {p} slots is not a whole number of blocks of {block_size}"),
        ));
    }
    check_dtype(OP, src, DType::U32)?;
    check_dtype(OP, dst, DType::U32)?;
    k_cache.check_same_device(src, OP)?;
    k_cache.check_same_device(dst, OP)?;
    let b = src.numel();
    check_shape(OP, "src", src, &[b])?;
    check_shape(OP, "dst", dst, &[b])?;
    match k_cache.device() {
        Device::Cpu => {
            crate::cpu::kv_cache::kv_cache_copy_blocks(k_cache, v_cache, src, dst, block_size)
        }
        Device::Cuda(_) => {
            crate::cuda::kv_cache::kv_cache_copy_blocks(k_cache, v_cache, src, dst, block_size)
        }
    }
}
