//! Flash-style causal GQA attention over packed sequences on the GPU (see `cu/attention.cu`).
//!
//! The kernels are compiled per head dim D (`-DHEAD_DIM`) and tile size (`-DBLOCK`), so every
//! loop over D has a compile-time bound. Forward tiles are 64 rows up to D = 128 (32 above);
//! the backward, which holds dk and dv accumulators in registers, uses 64 up to D = 64.

use super::launch::{kernel_source, run, Args, Grid, KernelSource};
use super::{device_of, suffix, zeros};
use crate::{DType, Error, Result, Tensor};

const SRC: KernelSource = kernel_source!("attention");
const THREADS: u32 = 128;
/// Shared memory one block may use on sm_90 (227 KiB).
const MAX_SMEM: usize = 227 * 1024;

fn u32_dim(op: &'static str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::msg(format!("{op}: dimension {v} exceeds u32")))
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
    let block = if d <= 128 { 64 } else { 32 };
    let smem = check_smem(OP, (3 * block * (d + 1) + block * (block + 1)) * 4, d)?;
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
    let func = format!("attention_fwd_{}", suffix(q.dtype(), OP)?);
    if n > 0 && s > 0 {
        run(&dev, &SRC, &defines(d, block), &func, g, args)?;
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
        let block = if d <= 64 { 64 } else { 32 };
        let defs = defines(d, block);
        // delta[n, h] = dout · out, one warp per row.
        let delta = zeros(&dev, &[n, h], DType::F32)?;
        let rows = n * h;
        let args = Args::new()
            .ptr(dout, &dev, OP)?
            .ptr(out, &dev, OP)?
            .ptr(&delta, &dev, OP)?
            .u32(u32_dim(OP, rows)?);
        let g = Grid::d1(u32_dim(OP, (rows * 32).div_ceil(256))?, 256);
        run(
            &dev,
            &SRC,
            &defs,
            &format!("attention_delta_{sfx}"),
            g,
            args,
        )?;

        let smem = check_smem(
            OP,
            (4 * block * (d + 1) + 2 * block * (block + 1) + 2 * block) * 4,
            d,
        )?;
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
        run(&dev, &SRC, &defs, &format!("attention_bwd_{sfx}"), g, args)?;
    }
    let dq = match dtype {
        DType::F32 => dq_acc,
        _ => super::cast::cast(&dq_acc, dtype)?,
    };
    Ok((dq, dk, dv))
}
