//! Elementwise helpers on the GPU: add, add in place, scale in place, fill in place (one tensor,
//! or many f32 tensors in one launch).

use super::launch::{kernel_source, run, Args, Grid, KernelSource};
use super::{cuda_err, device_of, empty, ptr, suffix};
use crate::{Result, Tensor};

const SRC: KernelSource = kernel_source!("elementwise");

pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    const OP: &str = "add";
    let dev = device_of(a, OP)?;
    let out = empty(&dev, a.shape(), a.dtype())?;
    let n = a.numel();
    let args = Args::new()
        .ptr(a, &dev, OP)?
        .ptr(b, &dev, OP)?
        .ptr(&out, &dev, OP)?
        .u64(n as u64);
    let func = format!("add_{}", suffix(a.dtype(), OP)?);
    run(
        &dev,
        &SRC,
        &[],
        &func,
        Grid::cover(n.div_ceil(8), 256),
        args,
    )?;
    Ok(out)
}

pub fn add_inplace(a: &mut Tensor, b: &Tensor) -> Result<()> {
    const OP: &str = "add_inplace";
    let dev = device_of(a, OP)?;
    let n = a.numel();
    let args = Args::new()
        .ptr(a, &dev, OP)?
        .ptr(b, &dev, OP)?
        .u64(n as u64);
    let func = format!("add_inplace_{}", suffix(a.dtype(), OP)?);
    run(
        &dev,
        &SRC,
        &[],
        &func,
        Grid::cover(n.div_ceil(8), 256),
        args,
    )
}

pub fn scale_inplace(x: &mut Tensor, s: f32) -> Result<()> {
    const OP: &str = "scale_inplace";
    let dev = device_of(x, OP)?;
    let n = x.numel();
    let args = Args::new().ptr(x, &dev, OP)?.f32(s).u64(n as u64);
    let func = format!("scale_inplace_{}", suffix(x.dtype(), OP)?);
    run(
        &dev,
        &SRC,
        &[],
        &func,
        Grid::cover(n.div_ceil(8), 256),
        args,
    )
}

pub fn fill_inplace(x: &mut Tensor, v: f32) -> Result<()> {
    const OP: &str = "fill_inplace";
    let dev = device_of(x, OP)?;
    let n = x.numel();
    let args = Args::new().ptr(x, &dev, OP)?.f32(v).u64(n as u64);
    let func = format!("fill_inplace_{}", suffix(x.dtype(), OP)?);
    run(
        &dev,
        &SRC,
        &[],
        &func,
        Grid::cover(n.div_ceil(8), 256),
        args,
    )
}

/// Elements per block of `fill_many_f32` (FILL_BLOCK_ELEMS in cu/elementwise.cu).
const FILL_BLOCK_ELEMS: usize = 8192;

/// `fill_inplace` of many f32 tensors of one GPU in one launch (a table of address, length and
/// first block per tensor goes to the device).
pub fn fill_many_f32(xs: &mut [&mut Tensor], v: f32) -> Result<()> {
    const OP: &str = "fill_many";
    let Some(first) = xs.first() else {
        return Ok(());
    };
    let dev = device_of(first, OP)?;
    let mut table: Vec<u64> = Vec::with_capacity(xs.len() * 3);
    let mut blocks = 0usize;
    for x in xs.iter() {
        let n = x.numel();
        if n == 0 {
            continue;
        }
        table.extend([ptr(x, &dev, OP)?, n as u64, blocks as u64]);
        blocks += n.div_ceil(FILL_BLOCK_ELEMS);
    }
    if blocks == 0 {
        return Ok(());
    }
    let slots = (table.len() / 3) as u32;
    let grid_x = u32::try_from(blocks)
        .map_err(|_| crate::Error::msg(format!("{OP}: {blocks} blocks exceed u32")))?;
    let stream = dev.stream();
    let table = stream.clone_htod(&table).map_err(cuda_err)?;
    let table_ptr = {
        use cudarc::driver::DevicePtr;
        table.device_ptr(stream).0
    };
    let args = Args::new().raw(table_ptr).u32(slots).f32(v);
    // The table is freed (stream-ordered) when `table` drops, after the kernel has read it.
    run(
        &dev,
        &SRC,
        &[],
        "fill_many_f32",
        Grid::d1(grid_x, 256),
        args,
    )
}
