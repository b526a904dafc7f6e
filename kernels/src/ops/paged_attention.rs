//! Decode attention over a paged KV cache: one new query token per sequence attends to every
//! token its blocks hold (itself included: its K/V was written by `kv_cache_write` first).
//!
//! Sequence s's token at position p sits in slot block_tables[s, p / block_size] · block_size +
//! p % block_size of the caches. Query head h reads kv head h / (H / K) (grouped-query attention).

use super::{check_dtype, check_float, check_same, check_shape};
use crate::{DType, Device, Error, Result, Tensor};

/// The paged caches and the attention's other inputs, as [`paged_attention`] takes them.
pub struct Paged<'a> {
    pub k_cache: &'a Tensor,
    pub v_cache: &'a Tensor,
    pub block_tables: &'a Tensor,
    pub context_lens: &'a Tensor,
    pub block_size: usize,
    pub max_context_len: usize,
    pub scale: f32,
}

/// q[S,H,D], k_cache/v_cache[P,K,D], block_tables[S,M] U32, context_lens[S] U32 -> out[S,H,D]:
/// out[s,h] = softmax_p(scale · q[s,h]·k[p]) v[p] over positions p < context_lens[s].
///
/// `max_context_len` must bound every context_lens[s] (≤ M · block_size): the GPU splits contexts
/// into partitions by it without reading the lengths back (no host sync). A sequence with context
/// length 0 gets zeros. Block ids must be < P / block_size (checked on the CPU; on the GPU the
/// caller guarantees it).
#[allow(clippy::too_many_arguments)]
pub fn paged_attention(
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    block_tables: &Tensor,
    context_lens: &Tensor,
    block_size: usize,
    max_context_len: usize,
    scale: f32,
) -> Result<Tensor> {
    paged_attention_in(
        q,
        &Paged {
            k_cache,
            v_cache,
            block_tables,
            context_lens,
            block_size,
            max_context_len,
            scale,
        },
    )
}

/// [`paged_attention`] with the caches and the other inputs in one [`Paged`].
pub fn paged_attention_in(q: &Tensor, paged: &Paged<'_>) -> Result<Tensor> {
    const OP: &str = "paged_attention";
    check_float(OP, q)?;
    check_same(OP, q, &[paged.k_cache, paged.v_cache])?;
    let (s, h, d) = q.dims3(OP)?;
    check_paged(OP, q, s, h, d, paged)?;
    match q.device() {
        Device::Cpu => crate::cpu::paged_attention::paged_attention(q, paged),
        Device::Cuda(_) => crate::cuda::paged_attention::paged_attention(q, paged),
    }
}

/// The checks of [`paged_attention`] on everything but q itself, for S sequences of H query heads
/// of head dim D whose rows are on `on`'s device.
pub(crate) fn check_paged(
    op: &'static str,
    on: &Tensor,
    s: usize,
    h: usize,
    d: usize,
    paged: &Paged<'_>,
) -> Result<()> {
    let (k_cache, v_cache) = (paged.k_cache, paged.v_cache);
    let (block_size, max_context_len) = (paged.block_size, paged.max_context_len);
    let (block_tables, context_lens) = (paged.block_tables, paged.context_lens);
    let (p, kh, _) = k_cache.dims3(op)?;
    check_shape(op, "k_cache", k_cache, &[p, kh, d])?;
    check_shape(op, "v_cache", v_cache, &[p, kh, d])?;
    if kh == 0 || !h.is_multiple_of(kh) {
        return Err(Error::shape(
            op,
            format!("query heads H = {h} must be a multiple of key/value heads K = {kh}"),
        ));
    }
    if block_size == 0 || !p.is_multiple_of(block_size) {
        return Err(Error::shape(
            op,
            format!("cache of {p} slots is not a whole number of blocks of {block_size}"),
        ));
    }
    check_dtype(op, block_tables, DType::U32)?;
    check_dtype(op, context_lens, DType::U32)?;
    on.check_same_device(block_tables, op)?;
    on.check_same_device(context_lens, op)?;
    let (ts, m) = block_tables.dims2(op)?;
    if ts != s {
        return Err(Error::shape(
            op,
            format!("block_tables has {ts} rows for {s} sequences"),
        ));
    }
    check_shape(op, "context_lens", context_lens, &[s])?;
    if max_context_len > m * block_size {
        return Err(Error::shape(
            op,
            format!(
                "max_context_len {max_context_len} exceeds what {m} blocks of {block_size} hold"
            ),
        ));
    }
    Ok(())
}
