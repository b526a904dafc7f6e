//! The epilogue of a fused q/k/v projection, for inference: from the f32 accumulators of
//! x·[Wq; Wk; Wv]ᵀ it adds the bias, rounds once to the cache's dtype, applies RoPE to q and k and
//! writes k, v into their paged-cache slots, all in one pass (one launch on the GPU instead of
//! bias + cast per projection, two `rope`s and a `kv_cache_write`).
//!
//! Numerics are those of the unfused ops: q = rope(T(acc_q + b_q)) with `linear`'s one rounding of
//! bias + product and `rope`'s arithmetic (the rotation in f32 of the rounded value, rounded once),
//! likewise k; v = T(acc_v + b_v).
//!
//! The cos/sin of a token's angles can come from a [`RopeTable`] built once per rollout (one row
//! per position, the same values the op would compute), instead of being evaluated per token
//! (f64 `pow` and `sincos` on the GPU, the slowest part of the op at decode).

use super::{check_dtype, check_float, check_same, check_shape};
use crate::{DType, Device, Error, Result, Tensor};

/// The q, k, v of one step: q[N,H,D], k[N,K,D], v[N,K,D] in the cache's dtype (k and v are the
/// rows also written to the cache; the packed prefill attention reads them).
pub struct Qkv {
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
}

/// acc[N, (H+2K)·D] F32 (each row: H query heads, then K key heads, then K value heads, D each),
/// bias Option<[(H+2K)·D]> in the cache dtype, pos[N] U32, slots[N] U32; caches k_cache, v_cache
/// [P, K, D] (F32 or BF16; K, D taken from them), `heads` = H, RoPE base `theta`.
/// Writes k, v of token n to slot slots[n]; slots must be distinct. As in `kv_cache_write`, a
/// slot ≥ P is skipped on the GPU (u32::MAX marks an idle row of a padded batch) and is an error
/// on the CPU.
#[allow(clippy::too_many_arguments)]
pub fn qkv_rope_cache(
    acc: &Tensor,
    bias: Option<&Tensor>,
    pos: &Tensor,
    slots: &Tensor,
    k_cache: &mut Tensor,
    v_cache: &mut Tensor,
    heads: usize,
    theta: f32,
) -> Result<Qkv> {
    run(acc, bias, pos, slots, k_cache, v_cache, heads, theta, None)
}

/// cos and sin of the RoPE angles of positions [0, P) for head dim D and base theta: [P, D] f32
/// rows (cos of pair i at column i, sin at D/2 + i), computed once with `qkv_rope_cache`'s own
/// arithmetic on the table's device, so a lookup gives the bits the op would compute.
pub struct RopeTable {
    cos_sin: Tensor,
    theta: f32,
}

impl RopeTable {
    pub fn new(positions: usize, d: usize, theta: f32, device: &Device) -> Result<RopeTable> {
        const OP: &str = "rope_table";
        if d == 0 || !d.is_multiple_of(2) || positions == 0 {
            return Err(Error::shape(
                OP,
                format!(
                    "{positions} positions of head dim {d}: need positions > 0 and an even D > 0"
                ),
            ));
        }
        if !(theta.is_finite() && theta > 0.0) {
            return Err(Error::msg(format!(
                "{OP}: theta must be a positive number, got {theta}"
            )));
        }
        let cos_sin = match device {
            Device::Cpu => crate::cpu::qkv_rope_cache::rope_table(positions, d, theta)?,
            Device::Cuda(dev) => crate::cuda::qkv_rope_cache::rope_table(dev, positions, d, theta)?,
        }; // [P, D]
        Ok(RopeTable { cos_sin, theta })
    }

    /// Positions covered (larger positions are computed by the op as without a table).
    pub fn positions(&self) -> usize {
        self.cos_sin.shape()[0]
    }

    pub fn head_dim(&self) -> usize {
        self.cos_sin.shape()[1]
    }
}

/// [`qkv_rope_cache`] with cos/sin read from `table` (built for the caches' head dim; its theta
/// is the RoPE base) for positions below `table.positions()`.
#[allow(clippy::too_many_arguments)]
pub fn qkv_rope_cache_table(
    acc: &Tensor,
    bias: Option<&Tensor>,
    pos: &Tensor,
    slots: &Tensor,
    k_cache: &mut Tensor,
    v_cache: &mut Tensor,
    heads: usize,
    table: &RopeTable,
) -> Result<Qkv> {
    let d = k_cache.shape().last().copied().unwrap_or(0);
    if table.head_dim() != d {
        return Err(Error::shape(
            "qkv_rope_cache",
            format!(
                "the RoPE table is for head dim {}, the caches have {d}",
                table.head_dim()
            ),
        ));
    }
    acc.check_same_device(&table.cos_sin, "qkv_rope_cache")?;
    let theta = table.theta;
    run(
        acc,
        bias,
        pos,
        slots,
        k_cache,
        v_cache,
        heads,
        theta,
        Some(&table.cos_sin),
    )
}

#[allow(clippy::too_many_arguments)]
fn run(
    acc: &Tensor,
    bias: Option<&Tensor>,
    pos: &Tensor,
    slots: &Tensor,
    k_cache: &mut Tensor,
    v_cache: &mut Tensor,
    heads: usize,
    theta: f32,
    table: Option<&Tensor>,
) -> Result<Qkv> {
    const OP: &str = "qkv_rope_cache";
    check_dtype(OP, acc, DType::F32)?;
    check_float(OP, k_cache)?;
    check_same(OP, k_cache, &[v_cache])?;
    acc.check_same_device(k_cache, OP)?;
    let (p, kh, d) = k_cache.dims3(OP)?;
    check_shape(OP, "v_cache", v_cache, &[p, kh, d])?;
    if d == 0 || !d.is_multiple_of(2) {
        return Err(Error::shape(
            OP,
            format!("head dim D = {d} must be even and positive"),
        ));
    }
    if heads == 0 || !heads.is_multiple_of(kh.max(1)) {
        return Err(Error::shape(
            OP,
            format!("{heads} query heads are not a multiple of the cache's {kh} key/value heads"),
        ));
    }
    let (n, width) = acc.dims2(OP)?;
    let expect = (heads + 2 * kh) * d;
    if width != expect {
        return Err(Error::shape(
            OP,
            format!("acc has {width} columns but (H + 2K)·D = ({heads} + 2·{kh})·{d} = {expect}"),
        ));
    }
    if let Some(b) = bias {
        check_same(OP, k_cache, &[b])?;
        check_shape(OP, "bias", b, &[expect])?;
    }
    if !(theta.is_finite() && theta > 0.0) {
        return Err(Error::msg(format!(
            "{OP}: theta must be a positive number, got {theta}"
        )));
    }
    for (name, t) in [("pos", pos), ("slots", slots)] {
        check_dtype(OP, t, DType::U32)?;
        acc.check_same_device(t, OP)?;
        check_shape(OP, name, t, &[n])?;
    }
    match acc.device() {
        Device::Cpu => crate::cpu::qkv_rope_cache::qkv_rope_cache(
            acc, bias, pos, slots, k_cache, v_cache, heads, theta, table,
        ),
        Device::Cuda(_) => crate::cuda::qkv_rope_cache::qkv_rope_cache(
            acc, bias, pos, slots, k_cache, v_cache, heads, theta, table,
        ),
    }
}
