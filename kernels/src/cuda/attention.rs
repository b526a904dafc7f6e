//! Flash-style causal GQA attention over packed sequences on the GPU (see `cu/attention.cu`).
//!
//! Three implementations, compiled per head dim D (`-DHEAD_DIM`) so that every loop over D has a
//! compile-time bound:
//! - `cu/attention_mma.cu`, `attention_fa_*`: tensor cores (mma.sync bf16, f32 accumulate) with
//!   ldmatrix operands and cp.async double buffering, for bf16 with D a multiple of 16 up to 128.
//!   Used by default for those. The backward runs per query head and reduces dq, dk, dv into f32
//!   buffers, rounded to bf16 at the end.
//! - `cu/attention_mma.cu`, `attention_mma_*`: the first tensor-core kernels (16-bit operand
//!   loads, one backward block per kv head), kept for comparison: `REALIGN_ATTENTION=mma`.
//! - `cu/attention.cu`: CUDA-core f32 arithmetic for f32 inputs, any other D, and bf16 when
//!   `REALIGN_ATTENTION=simt` (for comparison). Forward tiles are 64 rows up to D = 128 (32
//!   above); the backward, which holds dk and dv accumulators in registers, uses 64 up to D = 64.

use super::launch::{kernel_source, run, Args, Grid, KernelSource};
use super::{device_of, suffix, zeros};
use crate::{DType, Error, Result, Tensor};

const SRC: KernelSource = kernel_source!("attention");
const MMA: KernelSource = kernel_source!("attention_mma");
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
    /// `attention_mma_*` (first tensor-core version).
    Mma,
    /// `attention.cu` (CUDA cores).
    Simt,
}

fn kind(dtype: DType, d: usize) -> Kind {
    if dtype != DType::BF16 || !d.is_multiple_of(16) || d > 128 {
        return Kind::Simt;
    }
    match std::env::var("REALIGN_ATTENTION").as_deref() {
        Ok("simt") => Kind::Simt,
        Ok("mma") => Kind::Mma,
        _ => Kind::Fa,
    }
}

/// Dynamic shared memory of the tensor-core kernels (bf16 tiles with rows padded by 8).
fn mma_fwd_smem(d: usize) -> usize {
    3 * 64 * (d + 8) * 2
}

fn mma_bwd_smem(d: usize, bq: usize) -> usize {
    (2 * 64 + 2 * bq) * (d + 8) * 2 + bq * (64 + 8) * 2 + 2 * bq * 4
}

/// The fa forward: Q tile plus double-buffered K and V tiles.
fn fa_fwd_smem(d: usize) -> usize {
    5 * 64 * (d + 8) * 2
}

/// The fa backward: K, V, double-buffered Q and dO, the dS^T tile, double-buffered lse and delta.
fn fa_bwd_smem(d: usize, bq: usize) -> usize {
    (2 * 64 + 4 * bq) * (d + 8) * 2 + 64 * (bq + 8) * 2 + 4 * bq * 4
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
    const OP: &str = "attention";
    let dev = device_of(q, OP)?;
    let (n, h, d) = q.dims3(OP)?;
    let (_, kh, _) = k.dims3(OP)?;
    let s = cu_seqlens.numel().saturating_sub(1);
    let kind = kind(q.dtype(), d);
    let block = if kind != Kind::Simt || d <= 128 {
        64
    } else {
        32
    };
    let smem = if kind == Kind::Fa {
        check_smem(OP, fa_fwd_smem(d), d)?
    } else if kind == Kind::Mma {
        check_smem(OP, mma_fwd_smem(d), d)?
    } else {
        check_smem(OP, (3 * block * (d + 1) + block * (block + 1)) * 4, d)?
    };
    // Zero-filled so that tokens outside every sequence (if any) read as zeros, not garbage.
    let out = zeros(&dev, &[n, h, d], q.dtype())?;
    let lse = zeros(&dev, &[n, h], DType::F32)?;
    let g = Grid {
        grid: (u32_dim(OP, tile_bound(n, s, block))?, u32_dim(OP, h)?, 1),
        block: (THREADS, 1, 1),
        smem,
    };
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
    if n > 0 && s > 0 {
        if kind != Kind::Simt {
            let func = if kind == Kind::Fa {
                "attention_fa_fwd"
            } else {
                "attention_mma_fwd"
            };
            run(&dev, &MMA, &[format!("-DHEAD_DIM={d}")], func, g, args)?;
        } else {
            let func = format!("attention_fwd_{}", suffix(q.dtype(), OP)?);
            run(&dev, &SRC, &defines(d, block), &func, g, args)?;
        }
    }
    Ok((out, lse))
}

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
) -> Result<(Tensor, Tensor, Tensor)> {
    const OP: &str = "attention_backward";
    let dev = device_of(q, OP)?;
    let (n, h, d) = q.dims3(OP)?;
    let (_, kh, _) = k.dims3(OP)?;
    let s = cu_seqlens.numel().saturating_sub(1);
    let dtype = q.dtype();
    let sfx = suffix(dtype, OP)?;
    let kind = kind(dtype, d);
    if kind == Kind::Fa {
        // Up to D = 64, registers capped for 3 blocks per SM: a little spilling, but faster
        // (H200, D = 64: 0.374 vs 0.391 ms); above, the spills grow and it is not measured.
        let func = if d <= 64 {
            "attention_fa_bwd_occ3"
        } else {
            "attention_fa_bwd"
        };
        return fa_backward(dout, q, k, v, out, lse, cu_seqlens, scale, func);
    }
    let dq_acc = zeros(&dev, &[n, h, d], DType::F32)?;
    let dk = zeros(&dev, &[n, kh, d], dtype)?;
    let dv = zeros(&dev, &[n, kh, d], dtype)?;
    if n > 0 && s > 0 {
        let mma = kind == Kind::Mma;
        // Tensor cores: key tiles of 64, query tiles of `bq`; CUDA cores: square tiles of `block`.
        let bq = if d <= 64 { 64 } else { 32 };
        let block = if mma || d <= 64 { 64 } else { 32 };
        let (src, defs) = if mma {
            (&MMA, vec![format!("-DHEAD_DIM={d}"), format!("-DBQ={bq}")])
        } else {
            (&SRC, defines(d, block))
        };
        let name = |what: &str| {
            if mma {
                format!("attention_mma_{what}")
            } else {
                format!("attention_{what}_{sfx}")
            }
        };
        let delta = attention_delta(dout, out, src, &defs, &name("delta"))?;
        let smem = if mma {
            check_smem(OP, mma_bwd_smem(d, bq), d)?
        } else {
            check_smem(
                OP,
                (4 * block * (d + 1) + 2 * block * (block + 1) + 2 * block) * 4,
                d,
            )?
        };
        let g = Grid {
            grid: (u32_dim(OP, tile_bound(n, s, block))?, u32_dim(OP, kh)?, 1),
            block: (THREADS, 1, 1),
            smem,
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
        run(&dev, src, &defs, &name("bwd"), g, args)?;
    }
    let dq = match dtype {
        DType::F32 => dq_acc,
        _ => super::cast::cast(&dq_acc, dtype)?,
    };
    Ok((dq, dk, dv))
}

/// delta[n, h] = dout[n, h, :] · out[n, h, :] as [N,H] f32, one warp per row.
fn attention_delta(
    dout: &Tensor,
    out: &Tensor,
    src: &KernelSource,
    defs: &[String],
    func: &str,
) -> Result<Tensor> {
    const OP: &str = "attention_backward";
    let dev = device_of(dout, OP)?;
    let (n, h, _) = dout.dims3(OP)?;
    let delta = zeros(&dev, &[n, h], DType::F32)?;
    let rows = n * h;
    let args = Args::new()
        .ptr(dout, &dev, OP)?
        .ptr(out, &dev, OP)?
        .ptr(&delta, &dev, OP)?
        .u32(u32_dim(OP, rows)?);
    let g = Grid::d1(u32_dim(OP, (rows * 32).div_ceil(256))?, 256);
    run(&dev, src, defs, func, g, args)?;
    Ok(delta)
}

/// The `attention_fa_*` backward (bf16, D a multiple of 16 up to 128): dq, dk, dv are reduced
/// into f32 buffers by one block per (key tile, query head), then scaled and rounded to bf16.
#[allow(clippy::too_many_arguments)]
fn fa_backward(
    dout: &Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    cu_seqlens: &Tensor,
    scale: f32,
    func: &str,
) -> Result<(Tensor, Tensor, Tensor)> {
    const OP: &str = "attention_backward";
    let dev = device_of(q, OP)?;
    let (n, h, d) = q.dims3(OP)?;
    let (_, kh, _) = k.dims3(OP)?;
    let s = cu_seqlens.numel().saturating_sub(1);
    let dtype = q.dtype();
    let dq_acc = zeros(&dev, &[n, h, d], DType::F32)?;
    let dk_acc = zeros(&dev, &[n, kh, d], DType::F32)?;
    let dv_acc = zeros(&dev, &[n, kh, d], DType::F32)?;
    let bq = if d <= 64 { 64 } else { 32 };
    let defs = vec![format!("-DHEAD_DIM={d}"), format!("-DBQ={bq}")];
    if n > 0 && s > 0 {
        let delta = attention_delta(dout, out, &MMA, &defs, "attention_mma_delta")?;
        let g = Grid {
            grid: (u32_dim(OP, tile_bound(n, s, 64))?, u32_dim(OP, h)?, 1),
            block: (THREADS, 1, 1),
            smem: check_smem(OP, fa_bwd_smem(d, bq), d)?,
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
            .ptr(&dk_acc, &dev, OP)?
            .ptr(&dv_acc, &dev, OP)?
            .u32(u32_dim(OP, s)?)
            .u32(u32_dim(OP, h)?)
            .u32(u32_dim(OP, kh)?)
            .f32(scale);
        run(&dev, &MMA, &defs, func, g, args)?;
    }
    // f32 accumulators -> bf16 outputs; dq and dk carry the softmax scale.
    let finish = |acc: &Tensor, mul: f32| -> Result<Tensor> {
        let dst = zeros(&dev, acc.shape(), dtype)?;
        let m = acc.numel();
        let args = Args::new()
            .ptr(acc, &dev, OP)?
            .ptr(&dst, &dev, OP)?
            .u64(m as u64)
            .f32(mul);
        if m > 0 {
            run(
                &dev,
                &MMA,
                &defs,
                "attention_fa_finish",
                Grid::cover(m / 8, 256),
                args,
            )?;
        }
        Ok(dst)
    };
    Ok((
        finish(&dq_acc, scale)?,
        finish(&dk_acc, scale)?,
        finish(&dv_acc, 1.0)?,
    ))
}
