//! KV-cache row writes and block copies on the host (f32 caches).

use super::{f32s, f32s_mut, u32s};
use crate::{Error, Result, Tensor};

pub fn kv_cache_write(
    k_cache: &mut Tensor,
    v_cache: &mut Tensor,
    k: &Tensor,
    v: &Tensor,
    slots: &Tensor,
) -> Result<()> {
    const OP: &str = "kv_cache_write";
    let p = k_cache.shape()[0];
    let row = k_cache.shape()[1] * k_cache.shape()[2]; // K·D
    let slots = u32s(OP, slots)?;
    if let Some(&bad) = slots.iter().find(|&&s| s as usize >= p) {
        return Err(Error::msg(format!(
            "{OP}: slot {bad} is outside the cache of {p} slots"
        )));
    }
    for (cache, src) in [(k_cache, k), (v_cache, v)] {
        let src = f32s(OP, src)?;
        let dst = f32s_mut(OP, cache)?;
        for (n, &slot) in slots.iter().enumerate() {
            let s = slot as usize;
            dst[s * row..(s + 1) * row].copy_from_slice(&src[n * row..(n + 1) * row]);
        }
    }
    Ok(())
}

pub fn kv_cache_copy_blocks(
    k_cache: &mut Tensor,
    v_cache: &mut Tensor,
    src: &Tensor,
    dst: &Tensor,
    block_size: usize,
) -> Result<()> {
    const OP: &str = "kv_cache_copy_blocks";
    let blocks = k_cache.shape()[0] / block_size;
    let len = block_size * k_cache.shape()[1] * k_cache.shape()[2]; // elements per block
    let (src, dst) = (u32s(OP, src)?, u32s(OP, dst)?);
    for (&a, &b) in src.iter().zip(dst) {
        if a as usize >= blocks || b as usize >= blocks {
            return Err(Error::msg(format!(
                "{OP}: block copy {a} -> {b} is outside the cache of {blocks} blocks"
            )));
        }
    }
    for cache in [k_cache, v_cache] {
        let data = f32s_mut(OP, cache)?;
        for (&a, &b) in src.iter().zip(dst) {
            let (a, b) = (a as usize * len, b as usize * len);
            data.copy_within(a..a + len, b);
        }
    }
    Ok(())
}
