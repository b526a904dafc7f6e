//! Flash-style causal GQA attention over packed sequences on the GPU (see `cu/attention.cu`).
//!
//! Two implementations, compiled per head dim D (`-DHEAD_DIM`) so that every loop over D has a
//! compile-time bound:
//! - `cu/attention_mma.cu`, `attention_fa_*`: tensor cores (mma.sync bf16, f32 accumulate) with
//!   ldmatrix operands and cp.async double buffering, for bf16 with D a multiple of 16 up to 128.
//!   Used by default for those. Tile shapes, register caps, the block order and whether dq has
//!   its own kernel are compile-time choices ([`FaConfig`]); [`FaConfig::for_dim`] is the measured
//!   default, [`FaConfig::candidates`] the variants the benchmark and the tests compare.
//! - `cu/attention.cu`: CUDA-core f32 arithmetic for f32 inputs, any other D, and bf16 when
//!   `REALIGN_ATTENTION=simt` (for comparison). Forward tiles are 64 rows up to D = 128 (32
//!   above); the backward, which holds dk and dv accumulators in registers, uses 64 up to D = 64.
use super::launch::{kernel_source, run, Args, Grid, KernelSource};
use super::{device_of, empty, suffix, zeros};
use crate::{DType, Error, Result, Tensor};
use std::sync::OnceLock;

const SRC: KernelSource = kernel_source!("attention");
/// The tensor-core kernels with the shared MMA primitives (`cu/mma.cuh`) in front.
pub(crate) const MMA: KernelSource = KernelSource {
    name: "attention_mma",
    src: concat!(
        include_str!("../../cu/mma.cuh"),
        "#line 1 \"attention_mma.cu\"\n",
        include_str!("../../cu/attention_mma.cu"),
    ),
};
const THREADS: u32 = 128;
/// Shared memory one block may use on sm_90 (227 KiB).
const MAX_SMEM: usize = 227 * 1024;

fn u32_dim(op: &'static str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::msg(format!("{op}: dimension {v} exceeds u32")))
}

/// Which kernels handle a call.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `attention_fa_*` (tensor cores, default for bf16).
    Fa,
    /// `attention.cu` (CUDA cores).
    Simt,
}

fn kind(dtype: DType, d: usize) -> Kind {
    if dtype != DType::BF16 || !d.is_multiple_of(16) || d > 128 {
        return Kind::Simt;
    }
    match std::env::var("REALIGN_ATTENTION").as_deref() {
        Ok("simt") => Kind::Simt,
        _ => Kind::Fa,
    }
}

/// Compile-time shape of the `attention_fa_*` kernels (the defines of `cu/attention_mma.cu`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaConfig {
    /// Forward warps per block (4 or 8).
    pub fwd_warps: u32,
    /// Forward 16-row m-tiles per warp (1 or 2): query tile = 16 · fwd_warps · fwd_mt rows.
    pub fwd_mt: u32,
    /// Forward blocks per SM the registers are capped for (1 = no cap).
    pub fwd_minb: u32,
    /// Backward warps per block, 16 keys each (4 or 8).
    pub bwd_warps: u32,
    /// Backward query tile rows (32 or 64; must divide 16 · bwd_warps).
    pub bq: u32,
    /// Backward blocks per SM the registers are capped for (1 = no cap).
    pub bwd_minb: u32,
    /// dq by its own kernel (S and dP recomputed per query tile, no atomics) instead of f32
    /// reductions from the dk/dv kernel.
    pub split_dq: bool,
    /// Blocks in order of decreasing work over all sequences (up to 32), heads side by side.
    pub by_work: bool,
    /// Depth of the cp.async ring streaming the tiles (2 to 4): stages − 1 tiles in flight.
    pub stages: u32,
    /// The tile loader unrolled over compile-time row counts, and the backward's lse / delta rows
    /// staged by cp.async instead of plain loads that stall two warps per query tile (`LEAN` in
    /// cu/attention_mma.cu; the same results bit for bit). Fewer instructions per tile (NVRTC 13,
    /// D 64: dk/dv kernel 2256 → 1616, dq 1720 → 1400, forward 2448 → 2240); on by default.
    pub lean: bool,
}

impl FaConfig {
    /// The kernels as they were before the tile options (trainspeed run 2's default at D ≤ 64).
    pub const BASELINE: FaConfig = FaConfig {
        fwd_warps: 4,
        fwd_mt: 1,
        fwd_minb: 1,
        bwd_warps: 4,
        bq: 64,
        bwd_minb: 3,
        split_dq: false,
        by_work: false,
        stages: 2,
        lean: false,
    };

    /// The fastest at Qwen2.5-0.5B's training shapes (D = 64, 8 × 1024 tokens, H200, two
    /// comparisons on 2026-11-29; docs/perf-notes.md): two 16-row m-tiles per forward warp (each K
    /// and V fragment serves 32 query rows), dq in its own kernel (no atomics, no f32 dq buffer),
    /// blocks ordered by work. Deeper cp.async rings and 8-warp blocks were not faster.
    /// Since 2026-12-07 also `lean` (H100: the attention backward 0.308 → 0.284 ms, the forward
    /// 0.108 → 0.102, the whole step +1.2% in three alternating pairs).
    pub const FASTEST_D64: FaConfig = FaConfig {
        fwd_mt: 2,
        split_dq: true,
        by_work: true,
        lean: true,
        ..FaConfig::BASELINE
    };

    /// The configuration used for head dim `d` (bf16, d a multiple of 16 up to 128), with the
    /// fields `REALIGN_ATTENTION_CFG` names overridden (for measurements; see [`FaConfig::parse`]).
    pub fn for_dim(d: usize) -> FaConfig {
        static OVERRIDE: OnceLock<Option<String>> = OnceLock::new();
        let base = FaConfig::measured_default(d);
        match OVERRIDE.get_or_init(|| std::env::var("REALIGN_ATTENTION_CFG").ok()) {
            None => base,
            Some(text) => match base.parse(text) {
                Ok(cfg) if cfg.supports(d) => cfg,
                Ok(cfg) => {
                    tracing::warn!(
                        ?cfg,
                        d,
                        "REALIGN_ATTENTION_CFG does not fit this head dim; ignored"
                    );
                    base
                }
                Err(e) => {
                    tracing::warn!("REALIGN_ATTENTION_CFG ignored: {e}");
                    base
                }
            },
        }
    }

    /// `self` with the fields of `text` ("key=value,...", keys as the field names, booleans as
    /// 0/1) replaced.
    pub fn parse(&self, text: &str) -> Result<FaConfig> {
        let mut cfg = *self;
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let bad = || Error::msg(format!("attention config item {item:?} is not key=number"));
            let (key, value) = item.split_once('=').ok_or_else(bad)?;
            let n: u32 = value.trim().parse().map_err(|_| bad())?;
            match key.trim() {
                "fwd_warps" => cfg.fwd_warps = n,
                "fwd_mt" => cfg.fwd_mt = n,
                "fwd_minb" => cfg.fwd_minb = n,
                "bwd_warps" => cfg.bwd_warps = n,
                "bq" => cfg.bq = n,
                "bwd_minb" => cfg.bwd_minb = n,
                "split_dq" => cfg.split_dq = n != 0,
                "by_work" => cfg.by_work = n != 0,
                "stages" => cfg.stages = n,
                "lean" => cfg.lean = n != 0,
                other => {
                    return Err(Error::msg(format!(
                        "attention config key {other:?} is not a field of FaConfig"
                    )))
                }
            }
        }
        Ok(cfg)
    }

    /// The fields as [`FaConfig::parse`] reads them.
    pub fn to_text(&self) -> String {
        format!(
            "fwd_warps={},fwd_mt={},fwd_minb={},bwd_warps={},bq={},bwd_minb={},split_dq={},by_work={},stages={},lean={}",
            self.fwd_warps,
            self.fwd_mt,
            self.fwd_minb,
            self.bwd_warps,
            self.bq,
            self.bwd_minb,
            self.split_dq as u32,
            self.by_work as u32,
            self.stages,
            self.lean as u32
        )
    }

    /// The default without overrides.
    fn measured_default(d: usize) -> FaConfig {
        if d <= 64 {
            FaConfig::FASTEST_D64
        } else {
            // Larger register tiles: no caps, query tiles of 32 in the backward.
            FaConfig {
                bq: 32,
                bwd_minb: 1,
                lean: true,
                ..FaConfig::BASELINE
            }
        }
    }

    /// Named variants for benchmarks and tests (each valid for every D the kernels take).
    pub fn candidates() -> Vec<(&'static str, FaConfig)> {
        // The variants of the second H200 comparison (all ran on the GPU against the CPU).
        let best1 = FaConfig::FASTEST_D64;
        vec![
            ("base", FaConfig::BASELINE),
            (
                "mt2-split",
                FaConfig {
                    lean: false,
                    ..best1
                },
            ),
            ("mt2-split-lean", best1),
            (
                "base-lean",
                FaConfig {
                    lean: true,
                    ..FaConfig::BASELINE
                },
            ),
            ("mt2-split-s3", FaConfig { stages: 3, ..best1 }),
            ("mt2-split-s4", FaConfig { stages: 4, ..best1 }),
            (
                "mt2-s3",
                FaConfig {
                    stages: 3,
                    split_dq: false,
                    ..best1
                },
            ),
            (
                "q32-split-s3",
                FaConfig {
                    bq: 32,
                    stages: 3,
                    ..best1
                },
            ),
            (
                "q32-split-s4",
                FaConfig {
                    bq: 32,
                    stages: 4,
                    ..best1
                },
            ),
            (
                "occ4-split-s3",
                FaConfig {
                    fwd_mt: 1,
                    fwd_minb: 4,
                    stages: 3,
                    ..best1
                },
            ),
        ]
    }

    /// Whether the kernels can be built this way for head dim `d` (a multiple of 16): the tile
    /// sizes the kernels know, query tiles that start at key tiles, and (fused dq) the dq work
    /// splitting evenly over the warps and the head dim.
    pub fn supports(&self, d: usize) -> bool {
        let dq_warps_per_rows = self.bwd_warps / (self.bq / 16).max(1);
        matches!(self.fwd_warps, 4 | 8)
            && matches!(self.fwd_mt, 1 | 2)
            && matches!(self.bwd_warps, 4 | 8)
            && matches!(self.bq, 32 | 64)
            && (16 * self.bwd_warps).is_multiple_of(self.bq)
            && (1..=8).contains(&self.fwd_minb)
            && (1..=8).contains(&self.bwd_minb)
            && (2..=4).contains(&self.stages)
            && (self.split_dq
                || (dq_warps_per_rows >= 1 && (d / 8).is_multiple_of(dq_warps_per_rows as usize)))
    }

    fn check(&self, op: &'static str, d: usize) -> Result<()> {
        if self.supports(d) {
            Ok(())
        } else {
            Err(Error::msg(format!(
                "{op}: the attention kernels cannot be built as {self:?} for head dim {d}"
            )))
        }
    }

    /// The NVRTC defines of `cu/attention_mma.cu` for head dim `d`.
    pub fn defines_for(&self, d: usize) -> Vec<String> {
        vec![
            format!("-DHEAD_DIM={d}"),
            format!("-DFWD_WARPS={}", self.fwd_warps),
            format!("-DFWD_MT={}", self.fwd_mt),
            format!("-DFWD_MINB={}", self.fwd_minb),
            format!("-DBWD_WARPS={}", self.bwd_warps),
            format!("-DBQ={}", self.bq),
            format!("-DBWD_MINB={}", self.bwd_minb),
            format!("-DSPLIT_DQ={}", self.split_dq as u32),
            format!("-DSCHED={}", self.by_work as u32),
            format!("-DSTAGES={}", self.stages),
            format!("-DLEAN={}", self.lean as u32),
        ]
    }

    /// Forward query rows per block.
    fn bm(&self) -> usize {
        16 * (self.fwd_warps * self.fwd_mt) as usize
    }

    /// Backward keys per block.
    fn bk(&self) -> usize {
        16 * self.bwd_warps as usize
    }

    /// Forward shared memory: the Q tile plus `stages` K and V tiles of 64 keys (bf16 rows
    /// padded by 8).
    fn fwd_smem(&self, d: usize) -> usize {
        let st = self.stages as usize;
        (self.bm() + 2 * st * 64) * (d + 8) * 2
    }

    /// Backward: K, V, `stages` Q, dO, lse and delta tiles, and unless dq is split off, the dS^T
    /// tile.
    fn bwd_smem(&self, d: usize) -> usize {
        let (bk, bq, st) = (self.bk(), self.bq as usize, self.stages as usize);
        let dst = if self.split_dq { 0 } else { bk * (bq + 8) * 2 };
        (2 * bk + 2 * st * bq) * (d + 8) * 2 + 2 * st * bq * 4 + dst
    }

    /// The dq kernel: Q and dO tiles of 64 rows, `stages` K and V tiles.
    fn dq_smem(&self, d: usize) -> usize {
        let st = self.stages as usize;
        (2 * 64 + 2 * st * 64) * (d + 8) * 2
    }
}

fn defines(d: usize, block: usize) -> Vec<String> {
    vec![format!("-DHEAD_DIM={d}"), format!("-DBLOCK={block}")]
}

fn check_smem(op: &'static str, bytes: usize, d: usize) -> Result<u32> {
    if bytes > MAX_SMEM {
        return Err(Error::msg(format!(
            "{op}: head dim {d} needs {bytes} B of shared memory per block, more than the GPU's {MAX_SMEM} B"
        )));
    }
    Ok(bytes as u32)
}

/// Upper bound on the number of tiles over all sequences (each sequence's tiles start at its
/// first token): ceil(N / B) + S.
fn tile_bound(n: usize, s: usize, block: usize) -> usize {
    (n.div_ceil(block) + s).max(1)
}

pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cu_seqlens: &Tensor,
    scale: f32,
) -> Result<(Tensor, Tensor)> {
    let d = q.shape().last().copied().unwrap_or(0);
    attention_with(&FaConfig::for_dim(d), q, k, v, cu_seqlens, scale)
}

/// [`attention`] with the tensor-core kernels built as `cfg` says (ignored where the CUDA-core
/// kernels handle the call: f32, or D not a multiple of 16 up to 128).
pub fn attention_with(
    cfg: &FaConfig,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cu_seqlens: &Tensor,
    scale: f32,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "attention";
    let dev = device_of(q, OP)?;
    let (n, h, d) = q.dims3(OP)?;
    let (_, kh, _) = k.dims3(OP)?;
    let s = cu_seqlens.numel().saturating_sub(1);
    let kind = kind(q.dtype(), d);
    // Zero-filled so that tokens outside every sequence (if any) read as zeros, not garbage.
    let out = zeros(&dev, &[n, h, d], q.dtype())?;
    let lse = zeros(&dev, &[n, h], DType::F32)?;
    if n == 0 || s == 0 {
        return Ok((out, lse));
    }
    let args = Args::new()
        .ptr(q, &dev, OP)?
        .ptr(k, &dev, OP)?
        .ptr(v, &dev, OP)?
        .ptr(cu_seqlens, &dev, OP)?
        .ptr(&out, &dev, OP)?
        .ptr(&lse, &dev, OP)?
        .u32(u32_dim(OP, s)?)
        .u32(u32_dim(OP, h)?)
        .u32(u32_dim(OP, kh)?)
        .f32(scale);
    if kind == Kind::Fa {
        cfg.check(OP, d)?;
        let g = Grid {
            grid: (u32_dim(OP, tile_bound(n, s, cfg.bm()))?, u32_dim(OP, h)?, 1),
            block: (32 * cfg.fwd_warps, 1, 1),
            smem: check_smem(OP, cfg.fwd_smem(d), d)?,
        };
        run(&dev, &MMA, &cfg.defines_for(d), "attention_fa_fwd", g, args)?;
    } else {
        let block = if d <= 128 { 64 } else { 32 };
        let g = Grid {
            grid: (u32_dim(OP, tile_bound(n, s, block))?, u32_dim(OP, h)?, 1),
            block: (THREADS, 1, 1),
            smem: check_smem(OP, (3 * block * (d + 1) + block * (block + 1)) * 4, d)?,
        };
        let func = format!("attention_fwd_{}", suffix(q.dtype(), OP)?);
        run(&dev, &SRC, &defines(d, block), &func, g, args)?;
    }
    Ok((out, lse))
}

/// The backward of `attention` with the measured default tile configuration; with `rope`, dq and
/// dk come back rotated by RoPE's −a (the gradients of the q, k from before `rope`, as
/// `rope_backward` of each), the rotation fused into their stores.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    dout: &Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    cu_seqlens: &Tensor,
    scale: f32,
    rope: Option<Rope>,
) -> Result<(Tensor, Tensor, Tensor)> {
    let d = q.shape().last().copied().unwrap_or(0);
    attention_backward_with(
        &FaConfig::for_dim(d),
        dout,
        q,
        k,
        v,
        out,
        lse,
        cu_seqlens,
        scale,
        rope,
    )
}

/// The inverse rotation fused into the backward's dq and dk.
#[derive(Clone, Copy)]
pub struct Rope<'a> {
    /// Positions [N] U32.
    pub pos: &'a Tensor,
    pub theta: f32,
}

/// Shapes of one backward call, read once from q, k and cu_seqlens.
struct Dims {
    dev: super::CudaDevice,
    n: usize,
    h: usize,
    kh: usize,
    d: usize,
    /// Sequences.
    s: usize,
    dtype: DType,
}

/// [`attention_backward`] with the tensor-core kernels built as `cfg` says (ignored where the
/// CUDA-core kernels handle the call).
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_with(
    cfg: &FaConfig,
    dout: &Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    cu_seqlens: &Tensor,
    scale: f32,
    rope: Option<Rope>,
) -> Result<(Tensor, Tensor, Tensor)> {
    const OP: &str = "attention_backward";
    let (n, h, d) = q.dims3(OP)?;
    let dims = Dims {
        dev: device_of(q, OP)?,
        n,
        h,
        kh: k.dims3(OP)?.1,
        d,
        s: cu_seqlens.numel().saturating_sub(1),
        dtype: q.dtype(),
    };
    if kind(dims.dtype, d) == Kind::Fa {
        cfg.check(OP, d)?;
        return fa_backward(cfg, dims, dout, q, k, v, out, lse, cu_seqlens, scale, rope);
    }
    let Dims {
        dev, kh, s, dtype, ..
    } = dims;
    let dq_acc = zeros(&dev, &[n, h, d], DType::F32)?;
    let dk = zeros(&dev, &[n, kh, d], dtype)?;
    let dv = zeros(&dev, &[n, kh, d], dtype)?;
    if n > 0 && s > 0 {
        // Square tiles of `block` queries and keys.
        let block = if d <= 64 { 64 } else { 32 };
        let defs = defines(d, block);
        let sfx = suffix(dtype, OP)?;
        let delta = attention_delta(
            dout,
            out,
            &SRC,
            &defs,
            &format!("attention_delta_{sfx}"),
            None,
        )?;
        let g = Grid {
            grid: (u32_dim(OP, tile_bound(n, s, block))?, u32_dim(OP, kh)?, 1),
            block: (THREADS, 1, 1),
            smem: check_smem(
                OP,
                (4 * block * (d + 1) + 2 * block * (block + 1) + 2 * block) * 4,
                d,
            )?,
        };
        let args = Args::new()
            .ptr(dout, &dev, OP)?
            .ptr(q, &dev, OP)?
            .ptr(k, &dev, OP)?
            .ptr(v, &dev, OP)?
            .ptr(lse, &dev, OP)?
            .ptr(&delta, &dev, OP)?
            .ptr(cu_seqlens, &dev, OP)?
            .ptr(&dq_acc, &dev, OP)?
            .ptr(&dk, &dev, OP)?
            .ptr(&dv, &dev, OP)?
            .u32(u32_dim(OP, s)?)
            .u32(u32_dim(OP, h)?)
            .u32(u32_dim(OP, kh)?)
            .f32(scale);
        run(&dev, &SRC, &defs, &format!("attention_bwd_{sfx}"), g, args)?;
    }
    // The CUDA-core path (f32, unusual head dims) rotates with the rope kernel: dq while still
    // f32 (one rounding to bf16 fewer than rope_backward after the cast), dk as stored.
    let (dq_acc, dk) = match rope {
        Some(r) => (
            super::rope::rope_backward(&dq_acc, r.pos, r.theta)?,
            super::rope::rope_backward(&dk, r.pos, r.theta)?,
        ),
        None => (dq_acc, dk),
    };
    let dq = match dtype {
        DType::F32 => dq_acc,
        _ => super::cast::cast(&dq_acc, dtype)?,
    };
    Ok((dq, dk, dv))
}

/// delta[n, h] = dout[n, h, :] · out[n, h, :] as [N,H] f32, one warp per row; with `rope`
/// (`attention_fa_delta_rope`) also fills the [N,D] f32 cos / −sin table `tab` of the fused RoPE.
fn attention_delta(
    dout: &Tensor,
    out: &Tensor,
    src: &KernelSource,
    defs: &[String],
    func: &str,
    rope: Option<(Rope, &Tensor)>,
) -> Result<Tensor> {
    const OP: &str = "attention_backward";
    let dev = device_of(dout, OP)?;
    let (n, h, _) = dout.dims3(OP)?;
    // Every row is written (one warp each), so no zero fill.
    let delta = empty(&dev, &[n, h], DType::F32)?;
    let rows = n * h;
    let mut args = Args::new()
        .ptr(dout, &dev, OP)?
        .ptr(out, &dev, OP)?
        .ptr(&delta, &dev, OP)?
        .u32(u32_dim(OP, rows)?);
    if let Some((r, tab)) = rope {
        args = args
            .ptr(r.pos, &dev, OP)?
            .ptr(tab, &dev, OP)?
            .u32(u32_dim(OP, n)?)
            .f32(r.theta);
    }
    let g = Grid::d1(u32_dim(OP, (rows * 32).div_ceil(256))?, 256);
    run(&dev, src, defs, func, g, args)?;
    Ok(delta)
}

/// Where the fa backward puts dq.
enum Dq {
    /// f32 [N,H,D] the bwd kernel reduces into (unscaled), rounded to bf16 afterwards.
    Acc(Tensor),
    /// bf16 [N,H,D] written by `attention_fa_dq`.
    Direct(Tensor),
}

/// The `attention_fa_*` backward (bf16, D a multiple of 16 up to 128): dk, dv (and dq unless
/// `cfg.split_dq`) are reduced into f32 buffers by one block per (key tile, query head), then
/// scaled and rounded to bf16; a split dq is written by its own kernel. With `rope`, dq and dk
/// are rotated back by −a as they are stored (cos/sin from a table the delta launch builds).
#[allow(clippy::too_many_arguments)]
fn fa_backward(
    cfg: &FaConfig,
    dims: Dims,
    dout: &Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    cu_seqlens: &Tensor,
    scale: f32,
    rope: Option<Rope>,
) -> Result<(Tensor, Tensor, Tensor)> {
    const OP: &str = "attention_backward";
    let Dims {
        dev,
        n,
        h,
        kh,
        d,
        s,
        dtype,
    } = dims;
    // dq: an f32 accumulator the bwd kernel reduces into, or (split) the bf16 output the dq
    // kernel writes.
    let dq = if cfg.split_dq {
        Dq::Direct(zeros(&dev, &[n, h, d], dtype)?)
    } else {
        Dq::Acc(zeros(&dev, &[n, h, d], DType::F32)?)
    };
    let dk_acc = zeros(&dev, &[n, kh, d], DType::F32)?;
    let dv_acc = zeros(&dev, &[n, kh, d], DType::F32)?;
    let defs = cfg.defines_for(d);
    // [N,D] f32: cos a of pair i at column i, −sin a at D/2 + i; written by the delta kernel for
    // every token (so it needs no zero fill), read by the dq kernel and the finish kernels.
    let tab = match rope {
        Some(_) => Some(empty(&dev, &[n, d], DType::F32)?),
        None => None,
    };
    if n > 0 && s > 0 {
        let delta = match (rope, &tab) {
            (Some(r), Some(tab)) => attention_delta(
                dout,
                out,
                &MMA,
                &defs,
                "attention_fa_delta_rope",
                Some((r, tab)),
            )?,
            _ => attention_delta(dout, out, &MMA, &defs, "attention_fa_delta", None)?,
        };
        let g = Grid {
            grid: (u32_dim(OP, tile_bound(n, s, cfg.bk()))?, u32_dim(OP, h)?, 1),
            block: (32 * cfg.bwd_warps, 1, 1),
            smem: check_smem(OP, cfg.bwd_smem(d), d)?,
        };
        // The inputs both kernels take first: dout, q, k, v, lse, delta, cu_seqlens.
        let inputs = || -> Result<Args> {
            Args::new()
                .ptr(dout, &dev, OP)?
                .ptr(q, &dev, OP)?
                .ptr(k, &dev, OP)?
                .ptr(v, &dev, OP)?
                .ptr(lse, &dev, OP)?
                .ptr(&delta, &dev, OP)?
                .ptr(cu_seqlens, &dev, OP)
        };
        let sizes = |args: Args| -> Result<Args> {
            Ok(args
                .u32(u32_dim(OP, s)?)
                .u32(u32_dim(OP, h)?)
                .u32(u32_dim(OP, kh)?)
                .f32(scale))
        };
        let args = inputs()?
            // The bwd kernel's dq argument is unused when dq is split off.
            .ptr(
                match &dq {
                    Dq::Acc(acc) => acc,
                    Dq::Direct(_) => &dk_acc,
                },
                &dev,
                OP,
            )?
            .ptr(&dk_acc, &dev, OP)?
            .ptr(&dv_acc, &dev, OP)?;
        run(&dev, &MMA, &defs, "attention_fa_bwd", g, sizes(args)?)?;
        if let Dq::Direct(dq) = &dq {
            let g = Grid {
                grid: (u32_dim(OP, tile_bound(n, s, 64))?, u32_dim(OP, h)?, 1),
                block: (128, 1, 1),
                smem: check_smem(OP, cfg.dq_smem(d), d)?,
            };
            let args = inputs()?.ptr(dq, &dev, OP)?;
            let args = sizes(args)?.opt_ptr(tab.as_ref(), &dev, OP)?;
            run(&dev, &MMA, &defs, "attention_fa_dq", g, args)?;
        }
    }
    // f32 accumulators -> bf16 outputs; dq and dk carry the softmax scale (and the rotation).
    let finish = |acc: &Tensor, mul: f32, rotate: bool| -> Result<Tensor> {
        let m = acc.numel();
        if m == 0 || s == 0 {
            return zeros(&dev, acc.shape(), dtype);
        }
        // The finish kernels write every element, so no zero fill.
        let dst = empty(&dev, acc.shape(), dtype)?;
        let args = Args::new().ptr(acc, &dev, OP)?.ptr(&dst, &dev, OP)?;
        match tab.as_ref().filter(|_| rotate) {
            Some(tab) => {
                // One thread per 8 rotated pairs of a (token, head) row.
                let (_, heads, _) = acc.dims3(OP)?;
                let args = args
                    .ptr(tab, &dev, OP)?
                    .u64((m / d) as u64)
                    .u32(u32_dim(OP, heads)?)
                    .f32(mul);
                let g = Grid::cover(m / 16, 256);
                run(&dev, &MMA, &defs, "attention_fa_finish_rope", g, args)?;
            }
            None => {
                let args = args.u64(m as u64).f32(mul);
                let g = Grid::cover(m / 8, 256);
                run(&dev, &MMA, &defs, "attention_fa_finish", g, args)?;
            }
        }
        Ok(dst)
    };
    let dq = match dq {
        Dq::Acc(acc) => finish(&acc, scale, true)?,
        Dq::Direct(dq) => dq,
    };
    Ok((
        dq,
        finish(&dk_acc, scale, true)?,
        finish(&dv_acc, 1.0, false)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::FaConfig;

    #[test]
    fn config_text_round_trips_and_rejects_unknown_keys() {
        for (label, cfg) in FaConfig::candidates() {
            let back = FaConfig::BASELINE.parse(&cfg.to_text()).unwrap();
            assert_eq!(back, cfg, "{label}");
            assert!(cfg.supports(64), "{label} must build at D = 64");
        }
        let cfg = FaConfig::BASELINE.parse("fwd_mt=2, by_work=1").unwrap();
        assert_eq!((cfg.fwd_mt, cfg.by_work, cfg.bq), (2, true, 64));
        assert!(FaConfig::BASELINE.parse("tile=3").is_err());
        assert!(FaConfig::BASELINE.parse("bq=x").is_err());
        // dq split over 4 warps per 16 query rows needs D / 8 divisible by 4.
        let q32w8 = FaConfig::BASELINE.parse("bwd_warps=8,bq=32").unwrap();
        assert!(!q32w8.supports(16) && q32w8.supports(32));
    }
}
