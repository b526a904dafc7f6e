//! Flash-style causal GQA attention over packed sequences on the GPU (see `cu/attention.cu`).
//!
//! Two implementations, compiled per head dim D (`-DHEAD_DIM`) so that every loop over D has a
//! compile-time bound:
//! - `cu/attention_mma.cu`: tensor cores (mma.sync bf16, f32 accumulate) for bf16 with D a
//!   multiple of 16 up to 128. Used by default for those.
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

/// True when the tensor-core kernels handle this call.
fn use_mma(dtype: DType, d: usize) -> bool {
    dtype == DType::BF16
        && d.is_multiple_of(16)
        && d <= 128
        && std::env::var("REALIGN_ATTENTION").map_or(true, |v| v != "simt")
}

/// Dynamic shared memory of the tensor-core kernels (bf16 tiles with rows padded by 8).
fn mma_fwd_smem(d: usize) -> usize {
    3 * 64 * (d + 8) * 2
}

fn mma_bwd_smem(d: usize, bq: usize) -> usize {
    (2 * 64 + 2 * bq) * (d + 8) * 2 + bq * (64 + 8) * 2 + 2 * bq * 4
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
    let mma = use_mma(q.dtype(), d);
    let block = if mma || d <= 128 { 64 } else { 32 };
    let smem = if mma {
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
        if mma {
            run(
                &dev,
                &MMA,
                &[format!("-DHEAD_DIM={d}")],
                "attention_mma_fwd",
                g,
                args,
            )?;
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
    let dq_acc = zeros(&dev, &[n, h, d], DType::F32)?;
    let dk = zeros(&dev, &[n, kh, d], dtype)?;
    let dv = zeros(&dev, &[n, kh, d], dtype)?;
    if n > 0 && s > 0 {
        let mma = use_mma(dtype, d);
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
        // delta[n, h] = dout · out, one warp per row.
        let delta = zeros(&dev, &[n, h], DType::F32)?;
        let rows = n * h;
        let args = Args::new()
            .ptr(dout, &dev, OP)?
            .ptr(out, &dev, OP)?
            .ptr(&delta, &dev, OP)?
            .u32(u32_dim(OP, rows)?);
        let g = Grid::d1(u32_dim(OP, (rows * 32).div_ceil(256))?, 256);
        run(&dev, src, &defs, &name("delta"), g, args)?;

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
