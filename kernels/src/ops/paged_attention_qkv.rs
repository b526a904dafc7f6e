//! The decode layer's q/k/v epilogue and its paged attention as one op: from the f32 product
//! acc = xn·[Wq; Wk; Wv]ᵀ of one new token per sequence, out[S,H,D] = `paged_attention` of
//! q = rope(T(acc_q + b_q)) over caches that also hold the new token's k = rope(T(acc_k + b_k)) and
//! v = T(acc_v + b_v) in slot slots[s], exactly as [`qkv_rope_cache`] followed by
//! [`paged_attention`] (which is what it runs on the CPU and wherever the fused kernel does not
//! apply).
//!
//! On the GPU, with the tensor-core attention kernel (bf16, head dim a multiple of 16 up to 128,
//! GQA group up to 16), it is one launch (`paged_attention_qkv_bf16`, cu/paged_attention_mma.cu):
//! the attention blocks build their query rows from acc, and the block whose partition holds the
//! newest position writes that token's k, v into the caches before streaming its tiles. That
//! saves the epilogue's launch and its q/k/v tensors (~2.9 µs a layer at Qwen2.5-0.5B B 256 by
//! the 2026-11-29 profile: docs/rollout.md, "What's left" item 9).
//!
//! Positions, slots and context lengths relate as in a decode step: context_lens[s] counts the new
//! token, which sits at position context_lens[s] - 1 in slot slots[s] of the sequence's blocks.

use super::paged_attention::{check_paged, paged_attention, Paged};
use super::qkv_rope_cache::{
    check, check_table, qkv_rope_cache, qkv_rope_cache_table, Cache, RopeTable, Shape,
};
use crate::cuda::paged_attention::{paged_attention_qkv, qkv_split};
use crate::{Device, Result, Tensor};

/// The q/k/v epilogue's inputs: acc [S, (H+2K)·D] F32, bias Option<[(H+2K)·D]> in the caches'
/// dtype, pos [S] U32, slots [S] U32, `heads` = H, RoPE base `theta` with an optional table of
/// cos/sin per position (used where it covers the position), as [`qkv_rope_cache`] takes them.
pub struct QkvInputs<'a> {
    pub acc: &'a Tensor,
    pub bias: Option<&'a Tensor>,
    pub pos: &'a Tensor,
    pub slots: &'a Tensor,
    pub heads: usize,
    pub theta: f32,
    pub table: Option<&'a RopeTable>,
}

/// `qkv_rope_cache` then `paged_attention` over k_cache, v_cache [P,K,D] with the block tables
/// [S,M], context lengths [S], block size, context bound and scale of `paged_attention`; out
/// [S,H,D]. The caches gain the new tokens' k, v either way.
#[allow(clippy::too_many_arguments)]
pub fn paged_attention_qkv_fused(
    qkv: &QkvInputs<'_>,
    k_cache: &mut Tensor,
    v_cache: &mut Tensor,
    block_tables: &Tensor,
    context_lens: &Tensor,
    block_size: usize,
    max_context_len: usize,
    scale: f32,
) -> Result<Tensor> {
    const OP: &str = "paged_attention_qkv";
    // Every check before anything is written (the two-op path would write the caches first):
    // `of_cache` checks the caches' dtype, `check` that k and v match.
    let shape = Shape::of_cache(OP, k_cache, qkv.heads)?;
    let theta = qkv.table.map_or(qkv.theta, RopeTable::theta);
    if let Some(t) = qkv.table {
        check_table(OP, t, shape.d, qkv.acc)?;
    }
    let cache = Cache {
        slots: qkv.slots,
        k: &mut *k_cache,
        v: &mut *v_cache,
    };
    check(qkv.acc, qkv.bias, qkv.pos, Some(&cache), shape, theta)?;
    let paged = Paged {
        k_cache,
        v_cache,
        block_tables,
        context_lens,
        block_size,
        max_context_len,
        scale,
    };
    let s = qkv.acc.shape()[0];
    check_paged(OP, qkv.acc, s, qkv.heads, shape.d, &paged)?;
    if let Device::Cuda(_) = qkv.acc.device() {
        if let Some(cfg) = qkv_split(qkv.acc, qkv.heads, &paged)? {
            return paged_attention_qkv(qkv, &paged, &cfg);
        }
    }
    let (acc, bias, pos, slots, heads) = (qkv.acc, qkv.bias, qkv.pos, qkv.slots, qkv.heads);
    let q = match qkv.table {
        Some(t) => qkv_rope_cache_table(acc, bias, pos, slots, k_cache, v_cache, heads, t)?,
        None => qkv_rope_cache(acc, bias, pos, slots, k_cache, v_cache, heads, qkv.theta)?,
    }
    .q; // [S,H,D]
    let (bt, cl) = (block_tables, context_lens);
    paged_attention(
        &q,
        k_cache,
        v_cache,
        bt,
        cl,
        block_size,
        max_context_len,
        scale,
    )
}
