//! The fused q/k/v epilogue on the GPU (`cu/qkv_rope_cache.cu`): one launch per layer and step.

use super::launch::{kernel_source, run, Args, Grid, KernelSource};
use super::{device_of, empty, suffix, CudaDevice};
use crate::ops::qkv_rope_cache::{Cache, Qkv, Shape};
use crate::{DType, Error, Result, Tensor};

const SRC: KernelSource = kernel_source!("qkv_rope_cache");

fn u32_dim(op: &'static str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::msg(format!("{op}: dimension {v} exceeds u32")))
}

/// Without a cache (training) the kernel gets null cache pointers and 0 slots and writes only
/// q, k, v.
pub(crate) fn qkv_rope_cache(
    acc: &Tensor,
    bias: Option<&Tensor>,
    pos: &Tensor,
    cache: Option<&mut Cache<'_>>,
    shape: Shape,
    theta: f32,
    table: Option<&Tensor>,
) -> Result<Qkv> {
    const OP: &str = "qkv_rope_cache";
    let dev = device_of(acc, OP)?;
    let (heads, kh, d, dtype) = (shape.heads, shape.kv_heads, shape.d, shape.dtype);
    let n = acc.shape()[0];
    let p = cache.as_ref().map_or(0, |c| c.k.shape()[0]);
    let q = empty(&dev, &[n, heads, d], dtype)?;
    let k = empty(&dev, &[n, kh, d], dtype)?;
    let v = empty(&dev, &[n, kh, d], dtype)?;
    let args = Args::new()
        .ptr(acc, &dev, OP)?
        .opt_ptr(bias, &dev, OP)?
        .ptr(pos, &dev, OP)?
        .opt_ptr(cache.as_ref().map(|c| c.slots), &dev, OP)?
        .ptr(&q, &dev, OP)?
        .ptr(&k, &dev, OP)?
        .ptr(&v, &dev, OP)?
        .opt_ptr(cache.as_ref().map(|c| &*c.k), &dev, OP)?
        .opt_ptr(cache.as_ref().map(|c| &*c.v), &dev, OP)?
        .u32(u32_dim(OP, n)?)
        .u32(u32_dim(OP, heads)?)
        .u32(u32_dim(OP, kh)?)
        .u32(u32_dim(OP, d)?)
        .u32(u32_dim(OP, p)?)
        .f32(theta);
    let func = format!("qkv_rope_cache_{}", suffix(dtype, OP)?);
    // One block per `tpb` tokens (grid-stride); threads over tokens × heads × pair chunks; the
    // tokens' cos/sin tables in smem (as `rope`). Up to 8 tokens a block, fewer while that would
    // leave SMs idle (~2 blocks per SM of an H200: a decode batch of 256 gets a block per token).
    let tpb = n.div_ceil(264).clamp(1, 8);
    let per_thread = if (d / 2).is_multiple_of(8) { 8 } else { 1 };
    let items = tpb * (heads + 2 * kh) * (d / 2) / per_thread;
    let threads = items.next_multiple_of(32).clamp(32, 256) as u32;
    let args = args
        .u32(tpb as u32)
        .opt_ptr(table, &dev, OP)?
        .u32(u32_dim(OP, table.map_or(0, |t| t.shape()[0]))?);
    let g = Grid::d1(n.div_ceil(tpb).clamp(1, 65535 * 4) as u32, threads)
        .with_smem((tpb * d * 4) as u32);
    run(&dev, &SRC, &[], &func, g, args)?;
    Ok(Qkv { q, k, v })
}

/// `ops::qkv_rope_cache::RopeTable` on the GPU: [P, D] f32 rows of cos | sin.
pub fn rope_table(dev: &CudaDevice, positions: usize, d: usize, theta: f32) -> Result<Tensor> {
    const OP: &str = "rope_table";
    let tab = empty(dev, &[positions, d], DType::F32)?;
    let args = Args::new()
        .ptr(&tab, dev, OP)?
        .u32(u32_dim(OP, positions)?)
        .u32(u32_dim(OP, d)?)
        .f32(theta);
    run(
        dev,
        &SRC,
        &[],
        "rope_table",
        Grid::cover(positions * d / 2, 256),
        args,
    )?;
    Ok(tab)
}
