//! Paged decode attention on the GPU (`cu/paged_attention.cu`, and its tensor-core variant
//! `cu/paged_attention_mma.cu`): a split-K kernel over context partitions, specialised at compile
//! time for the head dim and the GQA group size, then a merge of the partitions when there is more
//! than one.

use super::launch::{run, Args, Grid, KernelSource};
use super::{device_of, empty, suffix};
use crate::ops::paged_attention::Paged;
use crate::ops::paged_attention_qkv::QkvInputs;
use crate::ops::qkv_rope_cache::RopeTable;
use crate::{DType, Error, Result, Tensor};

/// One module text for every variant: the MMA primitives, the CUDA-core kernels with the work
/// split, result store and combine shared by all, then the tensor-core kernel (each part compiled
/// only where its defines select it).
const SRC: KernelSource = KernelSource {
    name: "paged_attention",
    src: concat!(
        include_str!("../../cu/mma.cuh"),
        "#line 1 \"paged_attention.cu\"\n",
        include_str!("../../cu/paged_attention.cu"),
        "#line 1 \"paged_attention_mma.cu\"\n",
        include_str!("../../cu/paged_attention_mma.cu"),
    ),
};

/// Threads per block of the main kernel (`NWARPS` warps).
const THREADS: u32 = 128;
/// Largest GQA group × padded head dim ([`row_pad`]) the kernel is built for: the warps' partial
/// outputs (4 · GROUP · row_pad f32) must fit the 48 KiB of static shared memory, and each lane
/// holds GROUP × 8 query values and accumulators in registers. Real models use 64..1024 (e.g.
/// 7 × 64).
const MAX_GROUP_DIM: usize = 2048;
/// Largest GQA group of the chunked variant: its [group, 64] tile of weights joins the warps'
/// partial outputs in the 48 KiB of static shared memory.
const MAX_CHUNKED_GROUP: usize = 16;
/// Largest GQA group of the tensor-core kernel: the heads are the rows of one m16 MMA tile.
const MAX_MMA_GROUP: usize = 16;

/// How the kernel splits the work (compile-time constants of `cu/paged_attention.cu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PagedConfig {
    /// Tokens per partition (one thread block each); more partitions = more blocks + a merge.
    pub part: usize,
    /// Twice the lanes per token with 8-byte loads: half the per-lane registers.
    pub wide: bool,
    /// Tokens per lane group whose loads are issued together (1 or 2).
    pub unroll: usize,
    /// Query rows in shared memory instead of registers, with the register use capped for 4
    /// resident blocks per SM (`QSMEM`, `MINB`). Slower than `chunked` on the H200 (Qwen2.5-0.5B
    /// B 256: 43.1 against 29.7 µs, docs/benchmarks.md): not chosen by [`choose_split`].
    pub q_smem: bool,
    /// Tiles of 64 tokens: scores of a tile first (one thread per token, all heads), one softmax
    /// rescale per tile instead of per token (`CHUNKED`). Chosen by [`choose_split`] (with
    /// `wide`) where the tensor-core kernel does not apply. Needs a GQA group of at most 16
    /// (shared memory).
    pub chunked: bool,
    /// 0: the CUDA-core kernels above. 2..=4: the tensor-core kernel (`cu/paged_attention_mma.cu`,
    /// `MMA`) with a cp.async ring of that many 64-token K/V tiles (`STAGES`); `wide`, `unroll`,
    /// `q_smem` and `chunked` do not apply to it. Needs bf16, a head dim that is a multiple of 16
    /// up to 128 and a GQA group of at most 16.
    pub mma_stages: usize,
    /// The tensor-core kernel's lean tile loader and merge (`LEAN` in cu/paged_attention_mma.cu:
    /// one block-table division a tile, unrolled copies, conflict-free merge; the same bits).
    /// [`choose_split`] sets it from `REALIGN_PAGED_LEAN=1` until it has run on a GPU. Ignored
    /// by the CUDA-core kernels.
    pub lean: bool,
}

impl PagedConfig {
    /// The configuration used when none is given.
    pub const DEFAULT: PagedConfig = PagedConfig {
        part: 512,
        wide: false,
        unroll: 1,
        q_smem: false,
        chunked: false,
        mma_stages: 0,
        lean: false,
    };

    /// The benchmark knob
    /// `REALIGN_PAGED_SPLIT=part,wide,unroll[,q_smem[,chunked[,mma_stages[,lean]]]]` (e.g.
    /// `128,1,2` or `256,0,1,0,0,3`): when set, every call uses that split instead of
    /// [`choose_split`]'s (read once; a malformed value is reported and ignored;
    /// `REALIGN_PAGED_LEAN=1` turns `lean` on in it too). A forced
    /// tensor-core split falls back to [`choose_split`]'s on calls it cannot take (f32).
    pub fn forced() -> Option<PagedConfig> {
        static SPLIT: std::sync::OnceLock<Option<PagedConfig>> = std::sync::OnceLock::new();
        *SPLIT.get_or_init(|| {
            let v = std::env::var("REALIGN_PAGED_SPLIT").ok()?;
            let c = PagedConfig::parse(&v).map(|c| PagedConfig {
                lean: c.lean || lean_requested(),
                ..c
            });
            if c.is_none() {
                tracing::warn!(
                    "REALIGN_PAGED_SPLIT={v:?} is not \
                     part,wide,unroll[,q_smem[,chunked[,mma_stages[,lean]]]] (e.g. 128,1,2) with \
                     part >= 1, wide 0/1, unroll 1/2, mma_stages 0 or 2..4, lean 0/1; choosing \
                     the split per call"
                );
            }
            c
        })
    }

    /// `part,wide,unroll[,q_smem[,chunked[,mma_stages[,lean]]]]`, e.g. `128,1,2`, `512,0,1,0,1`
    /// or `512,0,1,0,0,3,1`.
    pub fn parse(v: &str) -> Option<PagedConfig> {
        let f: Vec<&str> = v.split(',').map(str::trim).collect();
        let flag = |x: &str| match x {
            "0" => Some(false),
            "1" => Some(true),
            _ => None,
        };
        let (part, wide, unroll) = match f[..] {
            [p, w, u, ..] if f.len() <= 7 => (p, w, u),
            _ => return None,
        };
        let c = PagedConfig {
            part: part.parse().ok()?,
            wide: flag(wide)?,
            unroll: unroll.parse().ok()?,
            q_smem: f.get(3).map_or(Some(false), |x| flag(x))?,
            chunked: f.get(4).map_or(Some(false), |x| flag(x))?,
            mma_stages: f.get(5).map_or(Some(0), |x| x.parse().ok())?,
            lean: f.get(6).map_or(Some(false), |x| flag(x))?,
        };
        c.is_valid().then_some(c)
    }

    /// Whether the kernel can be built with this split at all.
    fn is_valid(&self) -> bool {
        self.part >= 1
            && (1..=2).contains(&self.unroll)
            && (self.mma_stages == 0 || (2..=MAX_MMA_STAGES).contains(&self.mma_stages))
    }
}

/// Deepest cp.async ring of the tensor-core kernel (4 × 18 KiB of K/V tiles at D 64).
const MAX_MMA_STAGES: usize = 4;
/// The ring depth [`choose_split`] gives the tensor-core kernel: one tile in flight while one is
/// computed on, 37 KiB of shared memory a block at D 64 (measured fastest, see [`choose_split`]).
pub const MMA_STAGES: usize = 2;
/// Tokens per tile of the tensor-core kernel (its `TN`: 16 per warp).
const MMA_TILE: usize = 64;
/// Dynamic shared memory a block may ask for on sm_90 (227 KiB), less 1 KiB for the kernel's
/// static arrays.
const MAX_SMEM: usize = 226 * 1024;

/// Thread blocks per SM below which [`choose_split`] makes the CUDA-core kernels' partitions
/// smaller.
const MIN_BLOCKS_PER_SM: usize = 3;
/// The smallest partition [`choose_split`] picks.
const MIN_PART: usize = 128;

/// The split for S sequences, K kv heads, GQA group `group`, head dim `d` and dtype `dtype`, with
/// a context bound of `max_context_len`, on a GPU with `sms` SMs. Deterministic: a function of the
/// shapes only.
///
/// - bf16 at head dims 64 and 128 with a group of at most 16: the tensor-core kernel with a ring
///   of [`MMA_STAGES`] tiles over partitions of 512 tokens, halved (down to 128) only while the
///   grid would have fewer blocks than half the SMs. Measured on the H200 (docs/benchmarks.md,
///   2026-11-29 "Paged attention MMA", contexts 128..384 and all 256): 512-token partitions with
///   a 2-tile ring are the fastest or within 2% at Qwen2.5-0.5B and SmolLM2-135M shapes, B 64 and
///   256 (Qwen B 256: 14.2 µs a call, 1.74× the bandwidth floor, against 22.8 / 19.6 at 128 /
///   256-token partitions; B 64 (128 blocks): 9.0 µs against 9.2 at 128): the combine costs more
///   than more blocks gain. A 3-tile ring ties at B 256 Qwen and is 15-30% slower at SmolLM2
///   B 256 (55 KiB of shared memory a block: fewer resident blocks). Grids smaller than 64
///   blocks were not measured.
/// - elsewhere partitions of 512 tokens, halved (down to 128) while the grid would have fewer
///   than 3 thread blocks per SM, and the chunked softmax with wide lanes where the kernel takes
///   the group (at most 16) and the head dim was tested on a GPU (at most 128). Measured on the
///   H200 (lead 15:25, contexts 128..384): chunked + wide is the fastest CUDA-core variant at
///   every measured shape: Qwen2.5-0.5B B 256 56.5 -> 29.7 µs a call, B 64 (128-token
///   partitions) 14.6 µs, SmolLM2-135M B 64 11.7 µs (the per-token softmax variant 13.8); at B 64
///   the 128-token partitions cut a call from 31.0 to 19.4 µs (Qwen) with the per-token softmax
///   (helper `paged`).
#[allow(clippy::too_many_arguments)]
pub fn choose_split(
    s: usize,
    kv_heads: usize,
    group: usize,
    d: usize,
    dtype: DType,
    max_context_len: usize,
    sms: usize,
) -> PagedConfig {
    let mut cfg = PagedConfig::DEFAULT;
    let blocks = |part: usize| max_context_len.div_ceil(part).max(1) * kv_heads * s;
    let mma = dtype == DType::BF16 && (d == 64 || d == 128) && group <= MAX_MMA_GROUP;
    // Fewest blocks wanted, in half-SMs: the tensor-core kernel half an SM's worth, the others 3.
    let min_half_sms = if mma { 1 } else { 2 * MIN_BLOCKS_PER_SM };
    while cfg.part > MIN_PART && 2 * blocks(cfg.part) < min_half_sms * sms {
        cfg.part /= 2;
    }
    if mma {
        cfg.mma_stages = MMA_STAGES;
        cfg.lean = lean_requested();
    } else if group <= MAX_CHUNKED_GROUP && d <= 128 {
        cfg.chunked = true;
        cfg.wide = group * row_pad(d, true) <= MAX_GROUP_DIM;
    }
    cfg
}

/// Head-dim slots per query head in the kernel's shared memory (its `ROW_PAD`): lanes per token
/// (a power of two covering the `vec`-element chunks, at most 32) × elements per lane.
fn row_pad(d: usize, wide: bool) -> usize {
    let vec = if wide { 4 } else { 8 };
    let lanes = d.div_ceil(vec).next_power_of_two().min(32);
    lanes * d.div_ceil(lanes * vec) * vec
}

/// The kernel source, for compile tests.
pub fn source() -> KernelSource {
    KernelSource {
        name: SRC.name,
        src: SRC.src,
    }
}

/// The NVRTC defines of the kernel for head dim `d` and group size `group` (default split).
pub fn defines(d: usize, group: usize) -> Vec<String> {
    defines_with(d, group, &PagedConfig::DEFAULT)
}

/// The NVRTC defines of the kernel for head dim `d`, group size `group` and split `cfg`.
pub fn defines_with(d: usize, group: usize, cfg: &PagedConfig) -> Vec<String> {
    vec![
        format!("-DHEAD_DIM={d}"),
        format!("-DGROUP={group}"),
        format!("-DPART={}", cfg.part),
        format!("-DWIDE={}", u8::from(cfg.wide)),
        format!("-DUNROLL={}", cfg.unroll),
        format!("-DQSMEM={}", u8::from(cfg.q_smem)),
        format!("-DMINB={}", if cfg.q_smem { 4 } else { 1 }),
        format!("-DCHUNKED={}", u8::from(cfg.chunked)),
        format!("-DMMA={}", u8::from(cfg.mma_stages > 0)),
        format!("-DSTAGES={}", cfg.mma_stages.max(2)),
        format!("-DEARLY={}", u8::from(early_requested())),
        format!("-DLEAN={}", u8::from(cfg.lean && cfg.mma_stages > 0)),
        format!("-DPREWAIT={}", u8::from(prewait_requested())),
    ]
}

/// `REALIGN_PAGED_PREWAIT=1` (read once): with [`PagedConfig::lean`] and the early tile requests,
/// the fused decode attention stages its table entries and requests its first tiles before it
/// waits for the previous kernel (`PREWAIT` in cu/paged_attention_mma.cu). An A/B switch until it
/// has run on a GPU.
pub fn prewait_requested() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("REALIGN_PAGED_PREWAIT").is_ok_and(|v| v == "1"))
}

/// `REALIGN_PAGED_LEAN=1` (read once): [`choose_split`] (and a forced split) turn on
/// [`PagedConfig::lean`]. An A/B switch until it has run on a GPU.
pub fn lean_requested() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("REALIGN_PAGED_LEAN").is_ok_and(|v| v == "1"))
}

/// Whether the fused decode attention requests its first K/V tiles before it makes its query rows
/// (`EARLY` in cu/paged_attention_mma.cu): on by default since its GPU tests passed and it was
/// measured on an H100 (2026-12-07, with `REALIGN_DOWN_KSPLIT`: docs/benchmarks.md);
/// `REALIGN_PAGED_EARLY=0` (read once) turns it off.
pub fn early_requested() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("REALIGN_PAGED_EARLY").map_or(true, |v| v != "0"))
}

/// Dynamic shared memory of the tensor-core kernel: the K and V rings (`stages` tiles of 64 rows
/// of d + 8 bf16) and the partition's block-table entries (ceil(part / block_size) + 1 u32).
pub fn mma_smem_bytes(d: usize, cfg: &PagedConfig, block_size: usize) -> usize {
    2 * cfg.mma_stages * MMA_TILE * (d + 8) * 2 + (cfg.part.div_ceil(block_size.max(1)) + 1) * 4
}

fn u32_of(op: &'static str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::msg(format!("{op}: size {v} exceeds u32")))
}

/// `ops::paged_attention` on the GPU, with the split [`choose_split`] (or `REALIGN_PAGED_SPLIT`)
/// gives it.
pub fn paged_attention(q: &Tensor, paged: &Paged<'_>) -> Result<Tensor> {
    let split = split_for(q, paged.k_cache, paged.max_context_len)?;
    paged_attention_with(q, paged, &split)
}

/// The split a call uses: the forced one (`REALIGN_PAGED_SPLIT`, unless it is a tensor-core split
/// and the call is not bf16) or [`choose_split`]'s.
fn split_for(q: &Tensor, k_cache: &Tensor, max_context_len: usize) -> Result<PagedConfig> {
    let (s, h, d) = (q.shape()[0], q.shape()[1], q.shape()[2]);
    split_for_shape(q, s, h, d, k_cache, max_context_len)
}

/// [`split_for`] for S sequences of H query heads of head dim D on `on`'s device, in the caches'
/// dtype.
fn split_for_shape(
    on: &Tensor,
    s: usize,
    h: usize,
    d: usize,
    k_cache: &Tensor,
    max_context_len: usize,
) -> Result<PagedConfig> {
    let dtype = k_cache.dtype();
    if let Some(c) = PagedConfig::forced() {
        if c.mma_stages == 0 || dtype == DType::BF16 {
            return Ok(c);
        }
    }
    let dev = device_of(on, "paged_attention")?;
    let kh = k_cache.shape()[1];
    Ok(choose_split(
        s,
        kh,
        h / kh.max(1),
        d,
        dtype,
        max_context_len,
        super::sm_count(&dev),
    ))
}

/// [`paged_attention`] with an explicit work split (for tests and benchmarks of the variants).
/// The inputs must already have passed `ops::paged_attention`'s checks.
pub fn paged_attention_with(q: &Tensor, paged: &Paged<'_>, cfg: &PagedConfig) -> Result<Tensor> {
    let (s, h, d) = q.dims3("paged_attention")?;
    launch(Query::Rows(q), s, h, d, paged, cfg)
}

/// The split [`paged_attention_qkv`] would run with, when it is the tensor-core kernel's (the only
/// one with the fused epilogue): S sequences of `heads` query heads over the caches of `paged`.
pub fn qkv_split(acc: &Tensor, heads: usize, paged: &Paged<'_>) -> Result<Option<PagedConfig>> {
    let (s, d) = (acc.shape()[0], paged.k_cache.shape()[2]);
    let kh = paged.k_cache.shape()[1];
    let cfg = split_for_shape(acc, s, heads, d, paged.k_cache, paged.max_context_len)?;
    let fits = cfg.mma_stages > 0
        && paged.k_cache.dtype() == DType::BF16
        && d % 16 == 0
        && d <= 128
        && kh > 0
        && heads / kh <= MAX_MMA_GROUP
        && mma_smem_bytes(d, &cfg, paged.block_size) + qkv_static_smem(d, heads / kh) <= MAX_SMEM;
    Ok(fits.then_some(cfg))
}

/// Static shared memory the fused kernel adds: cos | sin (D f32) and the group's query rows
/// (GROUP · D bf16).
fn qkv_static_smem(d: usize, group: usize) -> usize {
    d * 4 + group * d * 2
}

/// The decode layer's q/k/v epilogue and its paged attention in one launch
/// (`paged_attention_qkv_bf16`): out [S,H,D] as `qkv_rope_cache` followed by `paged_attention`,
/// with the newest token's k, v written into the caches by the attention blocks. `cfg` must come
/// from [`qkv_split`]; the inputs must have passed both ops' checks.
pub fn paged_attention_qkv(
    qkv: &QkvInputs<'_>,
    paged: &Paged<'_>,
    cfg: &PagedConfig,
) -> Result<Tensor> {
    let (s, d) = (qkv.acc.shape()[0], paged.k_cache.shape()[2]);
    launch(Query::Fused(qkv), s, qkv.heads, d, paged, cfg)
}

/// Where the kernel's query rows come from.
enum Query<'a> {
    /// q [S,H,D] (`paged_attention_*`).
    Rows(&'a Tensor),
    /// Made by the blocks from the q/k/v product (`paged_attention_qkv_bf16`).
    Fused(&'a QkvInputs<'a>),
}

fn launch(
    query: Query<'_>,
    s: usize,
    h: usize,
    d: usize,
    paged: &Paged<'_>,
    cfg: &PagedConfig,
) -> Result<Tensor> {
    const OP: &str = "paged_attention";
    let (k_cache, v_cache) = (paged.k_cache, paged.v_cache);
    let (block_size, max_context_len) = (paged.block_size, paged.max_context_len);
    let dev = device_of(k_cache, OP)?;
    let dtype = k_cache.dtype();
    let kh = k_cache.shape()[1];
    let group = h / kh;
    if !cfg.is_valid() {
        return Err(Error::msg(format!("{OP}: bad work split {cfg:?}")));
    }
    let mma = cfg.mma_stages > 0;
    if mma && (dtype != DType::BF16 || !d.is_multiple_of(16) || d > 128 || group > MAX_MMA_GROUP) {
        return Err(Error::msg(format!(
            "{OP}: the tensor-core kernel takes bf16, a head dim that is a multiple of 16 up to \
             128 and a GQA group of at most {MAX_MMA_GROUP}; got {dtype:?}, D {d}, group {group}"
        )));
    }
    let fused = matches!(query, Query::Fused(_));
    if fused && !mma {
        return Err(Error::msg(format!(
            "{OP}: the fused q/k/v epilogue runs only in the tensor-core kernel, not with {cfg:?}"
        )));
    }
    if !mma && cfg.chunked && group > MAX_CHUNKED_GROUP {
        return Err(Error::msg(format!(
            "{OP}: the chunked kernel takes a GQA group of at most {MAX_CHUNKED_GROUP}, got {group}"
        )));
    }
    if !mma && group * row_pad(d, cfg.wide) > MAX_GROUP_DIM {
        return Err(Error::msg(format!(
            "{OP}: GQA group {group} × head dim {d} exceeds the CUDA kernel's limit of \
             {MAX_GROUP_DIM}"
        )));
    }
    let static_extra = if fused { qkv_static_smem(d, group) } else { 0 };
    if mma && mma_smem_bytes(d, cfg, block_size) + static_extra > MAX_SMEM {
        return Err(Error::msg(format!(
            "{OP}: the tensor-core kernel's tiles and block-table entries for partitions of {} \
             tokens in blocks of {block_size} need {} bytes of shared memory, more than {MAX_SMEM}",
            cfg.part,
            mma_smem_bytes(d, cfg, block_size) + static_extra
        )));
    }
    let m = paged.block_tables.shape()[1];
    let out = empty(&dev, &[s, h, d], dtype)?;
    let nparts = max_context_len.div_ceil(cfg.part).max(1);
    // Partition scratch: (max, sum) and the unnormalised output per (s, h, partition).
    let (ml, acc) = if nparts > 1 {
        (
            empty(&dev, &[s, h, nparts, 2], DType::F32)?,
            empty(&dev, &[s, h, nparts, d], DType::F32)?,
        )
    } else {
        // Unused by the kernel with one partition; a 1-element stand-in keeps the pointers valid.
        (
            empty(&dev, &[1], DType::F32)?,
            empty(&dev, &[1], DType::F32)?,
        )
    };
    let defs = defines_with(d, group, cfg);
    let sfx = suffix(dtype, OP)?;
    let (args, func) = match query {
        Query::Rows(q) => (
            Args::new().ptr(q, &dev, OP)?,
            format!("paged_attention_{sfx}"),
        ),
        Query::Fused(e) => (
            Args::new()
                .ptr(e.acc, &dev, OP)?
                .opt_ptr(e.bias, &dev, OP)?
                .ptr(e.pos, &dev, OP)?
                .ptr(e.slots, &dev, OP)?
                .opt_ptr(e.table.map(RopeTable::cos_sin), &dev, OP)?
                .u32(u32_of(OP, e.table.map_or(0, RopeTable::positions))?)
                .f32(e.table.map_or(e.theta, RopeTable::theta))
                .u32(u32_of(OP, k_cache.shape()[0])?),
            format!("paged_attention_qkv_{sfx}"),
        ),
    };
    let args = args
        .ptr(k_cache, &dev, OP)?
        .ptr(v_cache, &dev, OP)?
        .ptr(paged.block_tables, &dev, OP)?
        .ptr(paged.context_lens, &dev, OP)?
        .ptr(&out, &dev, OP)?
        .ptr(&ml, &dev, OP)?
        .ptr(&acc, &dev, OP)?
        .u32(u32_of(OP, h)?)
        .u32(u32_of(OP, kh)?)
        .u32(u32_of(OP, m)?)
        .u32(u32_of(OP, block_size)?)
        .f32(paged.scale);
    let grid = Grid {
        grid: (u32_of(OP, nparts)?, u32_of(OP, kh)?, u32_of(OP, s)?),
        block: (THREADS, 1, 1),
        smem: if mma {
            u32_of(OP, mma_smem_bytes(d, cfg, block_size))?
        } else {
            0
        },
    };
    run(&dev, &SRC, &defs, &func, grid, args)?;
    if nparts > 1 {
        let args = Args::new()
            .ptr(&ml, &dev, OP)?
            .ptr(&acc, &dev, OP)?
            .ptr(&out, &dev, OP)?
            .u32(u32_of(OP, h)?)
            .u32(u32_of(OP, nparts)?);
        let grid = Grid {
            grid: (u32_of(OP, h)?, u32_of(OP, s)?, 1),
            block: (u32_of(OP, d.div_ceil(32) * 32)?, 1, 1),
            smem: 0,
        };
        let func = format!("paged_attention_combine_{sfx}");
        run(&dev, &SRC, &defs, &func, grid, args)?;
    }
    Ok(out)
}
