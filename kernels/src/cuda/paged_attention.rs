//! Paged decode attention on the GPU (`cu/paged_attention.cu`): a split-K kernel over context
//! partitions, specialised at compile time for the head dim and the GQA group size, then a merge
//! of the partitions when there is more than one.

use super::launch::{kernel_source, run, Args, Grid, KernelSource};
use super::{device_of, empty, suffix};
use crate::{DType, Error, Result, Tensor};

const SRC: KernelSource = kernel_source!("paged_attention");

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
    /// resident blocks per SM (`QSMEM`, `MINB`). Not yet measured on a GPU: not chosen by
    /// [`choose_split`].
    pub q_smem: bool,
    /// Tiles of 64 tokens: scores of a tile first (one thread per token, all heads), one softmax
    /// rescale per tile instead of per token (`CHUNKED`). Chosen by [`choose_split`] (with
    /// `wide`) wherever it applies. Needs a GQA group of at most 16 (shared memory).
    pub chunked: bool,
}

impl PagedConfig {
    /// The configuration used when none is given.
    pub const DEFAULT: PagedConfig = PagedConfig {
        part: 512,
        wide: false,
        unroll: 1,
        q_smem: false,
        chunked: false,
    };

    /// The benchmark knob `REALIGN_PAGED_SPLIT=part,wide,unroll[,q_smem[,chunked]]` (e.g. `128,1,2`): when set, every
    /// call uses that split instead of [`choose_split`]'s (read once; a malformed value is reported
    /// and ignored).
    pub fn forced() -> Option<PagedConfig> {
        static SPLIT: std::sync::OnceLock<Option<PagedConfig>> = std::sync::OnceLock::new();
        *SPLIT.get_or_init(|| {
            let v = std::env::var("REALIGN_PAGED_SPLIT").ok()?;
            let c = PagedConfig::parse(&v);
            if c.is_none() {
                tracing::warn!(
                    "REALIGN_PAGED_SPLIT={v:?} is not part,wide,unroll (e.g. 128,1,2) with \
                     part >= 1, wide 0/1, unroll 1/2; choosing the split per call"
                );
            }
            c
        })
    }

    /// `part,wide,unroll[,q_smem[,chunked]]`, e.g. `128,1,2` or `512,0,1,0,1`.
    pub fn parse(v: &str) -> Option<PagedConfig> {
        let f: Vec<&str> = v.split(',').map(str::trim).collect();
        let flag = |x: &str| match x {
            "0" => Some(false),
            "1" => Some(true),
            _ => None,
        };
        let (part, wide, unroll, q_smem, chunked) = match f[..] {
            [p, w, u] => (p, w, u, false, false),
            [p, w, u, q] => (p, w, u, flag(q)?, false),
            [p, w, u, q, c] => (p, w, u, flag(q)?, flag(c)?),
            _ => return None,
        };
        let c = PagedConfig {
            part: part.parse().ok()?,
            wide: flag(wide)?,
            unroll: unroll.parse().ok()?,
            q_smem,
            chunked,
        };
        (c.part >= 1 && (1..=2).contains(&c.unroll)).then_some(c)
    }
}

/// Thread blocks per SM below which [`choose_split`] makes partitions smaller.
const MIN_BLOCKS_PER_SM: usize = 3;
/// The smallest partition [`choose_split`] picks.
const MIN_PART: usize = 128;

/// The split for S sequences, K kv heads, GQA group `group` and head dim `d`, with a context
/// bound of `max_context_len`, on a GPU with `sms` SMs: partitions of 512 tokens, halved (down to
/// 128) while the grid would have fewer than 3 thread blocks per SM; the chunked softmax with
/// wide lanes where the kernel takes the group (at most 16) and the head dim was tested on a GPU
/// (at most 128). Measured on the H200 (docs/benchmarks.md, 2026-11-29 lead 15:25, contexts
/// 128..384): chunked + wide is the fastest variant at every measured shape: Qwen2.5-0.5B B 256
/// 56.5 -> 29.7 µs a call, B 64 (128-token partitions) 14.6 µs, SmolLM2-135M B 64 11.7 µs (the
/// per-token softmax variant 13.8). Partition sizes as measured by helper `paged`: at B 64 the
/// 128-token partitions cut a call from 31.0 to 19.4 µs (Qwen) with the per-token softmax.
pub fn choose_split(
    s: usize,
    kv_heads: usize,
    group: usize,
    d: usize,
    max_context_len: usize,
    sms: usize,
) -> PagedConfig {
    let mut cfg = PagedConfig::DEFAULT;
    let blocks = |part: usize| max_context_len.div_ceil(part).max(1) * kv_heads * s;
    while cfg.part > MIN_PART && blocks(cfg.part) < MIN_BLOCKS_PER_SM * sms {
        cfg.part /= 2;
    }
    if group <= MAX_CHUNKED_GROUP && d <= 128 {
        cfg.chunked = true;
        cfg.wide = group * row_pad(d, true) <= MAX_GROUP_DIM;
    }
    cfg
}

/// Streaming multiprocessors of `dev` (asked once per process; 132, an H200's, if the driver
/// does not say).
fn sm_count(dev: &super::CudaDevice) -> usize {
    static SMS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *SMS.get_or_init(|| {
        use cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT;
        dev.context()
            .attribute(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .ok()
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n > 0)
            .unwrap_or(132)
    })
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
    kernel_source!("paged_attention")
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
    ]
}

fn u32_of(op: &'static str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::msg(format!("{op}: size {v} exceeds u32")))
}

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
    paged_attention_with(
        q,
        k_cache,
        v_cache,
        block_tables,
        context_lens,
        block_size,
        max_context_len,
        scale,
        &split_for(q, k_cache, max_context_len)?,
    )
}

/// The split a call uses: the forced one (`REALIGN_PAGED_SPLIT`) or [`choose_split`]'s.
fn split_for(q: &Tensor, k_cache: &Tensor, max_context_len: usize) -> Result<PagedConfig> {
    if let Some(c) = PagedConfig::forced() {
        return Ok(c);
    }
    let dev = device_of(q, "paged_attention")?;
    let (s, h, d) = (q.shape()[0], q.shape()[1], q.shape()[2]);
    let kh = k_cache.shape()[1];
    Ok(choose_split(
        s,
        kh,
        h / kh.max(1),
        d,
        max_context_len,
        sm_count(&dev),
    ))
}

/// [`paged_attention`] with an explicit work split (for tests and benchmarks of the variants).
/// The inputs must already have passed `ops::paged_attention`'s checks.
#[allow(clippy::too_many_arguments)]
pub fn paged_attention_with(
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    block_tables: &Tensor,
    context_lens: &Tensor,
    block_size: usize,
    max_context_len: usize,
    scale: f32,
    cfg: &PagedConfig,
) -> Result<Tensor> {
    const OP: &str = "paged_attention";
    let dev = device_of(q, OP)?;
    let (s, h, d) = q.dims3(OP)?;
    let kh = k_cache.shape()[1];
    let group = h / kh;
    if cfg.part == 0 || !(1..=2).contains(&cfg.unroll) {
        return Err(Error::msg(format!("{OP}: bad work split {cfg:?}")));
    }
    if cfg.chunked && group > MAX_CHUNKED_GROUP {
        return Err(Error::msg(format!(
            "{OP}: the chunked kernel takes a GQA group of at most {MAX_CHUNKED_GROUP}, got {group}"
        )));
    }
    if group * row_pad(d, cfg.wide) > MAX_GROUP_DIM {
        return Err(Error::msg(format!(
            "{OP}: GQA group {group} × head dim {d} exceeds the CUDA kernel's limit of \
             {MAX_GROUP_DIM}"
        )));
    }
    let m = block_tables.shape()[1];
    let out = empty(&dev, &[s, h, d], q.dtype())?;
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
    let sfx = suffix(q.dtype(), OP)?;
    let args = Args::new()
        .ptr(q, &dev, OP)?
        .ptr(k_cache, &dev, OP)?
        .ptr(v_cache, &dev, OP)?
        .ptr(block_tables, &dev, OP)?
        .ptr(context_lens, &dev, OP)?
        .ptr(&out, &dev, OP)?
        .ptr(&ml, &dev, OP)?
        .ptr(&acc, &dev, OP)?
        .u32(u32_of(OP, h)?)
        .u32(u32_of(OP, kh)?)
        .u32(u32_of(OP, m)?)
        .u32(u32_of(OP, block_size)?)
        .f32(scale);
    let grid = Grid {
        grid: (u32_of(OP, nparts)?, u32_of(OP, kh)?, u32_of(OP, s)?),
        block: (THREADS, 1, 1),
        smem: 0,
    };
    run(
        &dev,
        &SRC,
        &defs,
        &format!("paged_attention_{sfx}"),
        grid,
        args,
    )?;
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
