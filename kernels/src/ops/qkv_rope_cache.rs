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
    let shape = Shape::of_cache("qkv_rope_cache", k_cache, heads)?;
    let cache = Some(Cache {
        slots,
        k: k_cache,
        v: v_cache,
    });
    run(acc, bias, pos, cache, shape, theta, None)
}

/// The same epilogue without a cache, for the training forward: q[N,H,D], k[N,K,D], v[N,K,D]
/// in `dtype` (the weights' dtype; f32 on the CPU) from acc[N, (H+2K)·D] F32, with `heads` = H,
/// `kv_heads` = K, cos/sin from `table` where it covers the position (else computed, as
/// [`qkv_rope_cache`]). Values as [`qkv_rope_cache`]'s (and so as the decode step's).
#[allow(clippy::too_many_arguments)]
pub fn qkv_rope(
    acc: &Tensor,
    bias: Option<&Tensor>,
    pos: &Tensor,
    heads: usize,
    kv_heads: usize,
    dtype: DType,
    theta: f32,
    table: Option<&RopeTable>,
) -> Result<Qkv> {
    const OP: &str = "qkv_rope";
    let (_, width) = acc.dims2(OP)?;
    let all = heads + 2 * kv_heads;
    if all == 0 || !width.is_multiple_of(all) {
        return Err(Error::shape(
            OP,
            format!("acc has {width} columns, not a multiple of H + 2K = {heads} + 2·{kv_heads}"),
        ));
    }
    let d = width / all;
    if let Some(t) = table {
        check_table(OP, t, d, acc)?;
    }
    let shape = Shape {
        heads,
        kv_heads,
        d,
        dtype,
    };
    run(
        acc,
        bias,
        pos,
        None,
        shape,
        table.map_or(theta, |t| t.theta),
        table.map(|t| &t.cos_sin),
    )
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

    /// The RoPE base the table was built for.
    pub fn theta(&self) -> f32 {
        self.theta
    }

    /// The [P, D] f32 rows of cos | sin.
    pub(crate) fn cos_sin(&self) -> &Tensor {
        &self.cos_sin
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
    const OP: &str = "qkv_rope_cache";
    let d = k_cache.shape().last().copied().unwrap_or(0);
    check_table(OP, table, d, acc)?;
    let shape = Shape::of_cache(OP, k_cache, heads)?;
    let cache = Some(Cache {
        slots,
        k: k_cache,
        v: v_cache,
    });
    run(
        acc,
        bias,
        pos,
        cache,
        shape,
        table.theta,
        Some(&table.cos_sin),
    )
}

pub(crate) fn check_table(
    op: &'static str,
    table: &RopeTable,
    d: usize,
    acc: &Tensor,
) -> Result<()> {
    if table.head_dim() != d {
        return Err(Error::shape(
            op,
            format!(
                "the RoPE table is for head dim {}, the heads have {d}",
                table.head_dim()
            ),
        ));
    }
    acc.check_same_device(&table.cos_sin, op)
}

/// Where the k, v rows also go: the paged caches [P, K, D] and each token's slot.
pub(crate) struct Cache<'a> {
    pub slots: &'a Tensor,
    pub k: &'a mut Tensor,
    pub v: &'a mut Tensor,
}

/// Heads, head dim and output dtype of one epilogue.
#[derive(Clone, Copy)]
pub(crate) struct Shape {
    pub heads: usize,
    pub kv_heads: usize,
    pub d: usize,
    pub dtype: DType,
}

impl Shape {
    pub(crate) fn of_cache(op: &'static str, k_cache: &Tensor, heads: usize) -> Result<Shape> {
        check_float(op, k_cache)?;
        let (_, kv_heads, d) = k_cache.dims3(op)?;
        Ok(Shape {
            heads,
            kv_heads,
            d,
            dtype: k_cache.dtype(),
        })
    }
}

fn run(
    acc: &Tensor,
    bias: Option<&Tensor>,
    pos: &Tensor,
    mut cache: Option<Cache<'_>>,
    shape: Shape,
    theta: f32,
    table: Option<&Tensor>,
) -> Result<Qkv> {
    check(acc, bias, pos, cache.as_ref(), shape, theta)?;
    let epilogue = match acc.device() {
        Device::Cpu => crate::cpu::qkv_rope_cache::qkv_rope_cache,
        Device::Cuda(_) => crate::cuda::qkv_rope_cache::qkv_rope_cache,
    };
    epilogue(acc, bias, pos, cache.as_mut(), shape, theta, table)
}

/// The epilogue's input checks (shapes, dtypes, devices, theta), for [`run`] and for the fused
/// decode attention (`ops::paged_attention_qkv`).
pub(crate) fn check(
    acc: &Tensor,
    bias: Option<&Tensor>,
    pos: &Tensor,
    cache: Option<&Cache<'_>>,
    shape: Shape,
    theta: f32,
) -> Result<()> {
    const OP: &str = "qkv_rope_cache";
    check_dtype(OP, acc, DType::F32)?;
    let Shape {
        heads,
        kv_heads: kh,
        d,
        dtype,
    } = shape;
    if d == 0 || !d.is_multiple_of(2) {
        return Err(Error::shape(
            OP,
            format!("head dim D = {d} must be even and positive"),
        ));
    }
    if heads == 0 || kh == 0 || !heads.is_multiple_of(kh) {
        return Err(Error::shape(
            OP,
            format!("{heads} query heads are not a multiple of the {kh} key/value heads"),
        ));
    }
    if !matches!(dtype, DType::F32 | DType::BF16) || (acc.device().is_cpu() && dtype != DType::F32)
    {
        return Err(Error::msg(format!(
            "{OP}: q/k/v in {dtype} on {} are not supported (f32, or bf16 on a GPU)",
            acc.device()
        )));
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
        check_dtype(OP, b, dtype)?;
        acc.check_same_device(b, OP)?;
        check_shape(OP, "bias", b, &[expect])?;
    }
    if !(theta.is_finite() && theta > 0.0) {
        return Err(Error::msg(format!(
            "{OP}: theta must be a positive number, got {theta}"
        )));
    }
    check_dtype(OP, pos, DType::U32)?;
    acc.check_same_device(pos, OP)?;
    check_shape(OP, "pos", pos, &[n])?;
    if let Some(c) = cache {
        check_same(OP, c.k, &[c.v])?;
        acc.check_same_device(c.k, OP)?;
        let p = c.k.shape()[0];
        check_shape(OP, "v_cache", c.v, &[p, kh, d])?;
        check_dtype(OP, c.slots, DType::U32)?;
        acc.check_same_device(c.slots, OP)?;
        check_shape(OP, "slots", c.slots, &[n])?;
    }
    Ok(())
}
