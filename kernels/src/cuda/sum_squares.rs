//! Sum of squares on the GPU, accumulated in f64: one tensor or many at once (each into its own
//! slot of one device buffer), read back as host scalars with one synchronisation; or turned on
//! the device into the clip decision of an optimiser step ([`grad_clip`]), read by the AdamW kernel
//! without any synchronisation.

use cudarc::driver::{CudaSlice, DevicePtr};

use super::launch::{kernel_source, run, Args, Grid, KernelSource};
use super::{cuda_err, device_of, ptr, suffix, CudaDevice};
use crate::{Result, Tensor};

const SRC: KernelSource = kernel_source!("sum_squares");

pub fn sum_squares(x: &Tensor) -> Result<f64> {
    Ok(sum_squares_each(&[x])?[0])
}

/// Elements per block of `sum_squares_many_f32` (SS_BLOCK_ELEMS in cu/sum_squares.cu).
const MANY_BLOCK_ELEMS: usize = 16384;

/// Σ x² of every tensor of `xs` (all on one GPU), in order, read back once.
pub fn sum_squares_each(xs: &[&Tensor]) -> Result<Vec<f64>> {
    const OP: &str = "sum_squares";
    let Some(first) = xs.first() else {
        return Ok(vec![]);
    };
    let dev = device_of(first, OP)?;
    let sums = enqueue_sums(&dev, xs)?;
    dev.stream().clone_dtoh(&sums).map_err(cuda_err)
}

/// Queues Σ x² of every tensor of `xs` into slot i of a fresh f64 device buffer (`xs.len()`
/// slots). The f32 tensors go through one launch (a table of address, length, first block and
/// slot per tensor), others one launch each.
fn enqueue_sums(dev: &CudaDevice, xs: &[&Tensor]) -> Result<CudaSlice<f64>> {
    const OP: &str = "sum_squares";
    let stream = dev.stream();
    let out = stream
        .alloc_zeros::<f64>(xs.len().max(1))
        .map_err(cuda_err)?;
    let out_ptr = out.device_ptr(stream).0;
    // Table rows: address, length, first block, output slot.
    let mut table: Vec<u64> = vec![];
    let mut blocks = 0usize;
    for (i, x) in xs.iter().enumerate() {
        let n = x.numel();
        if n == 0 {
            continue;
        }
        if x.dtype() == crate::DType::F32 {
            table.extend([ptr(x, dev, OP)?, n as u64, blocks as u64, i as u64]);
            blocks += n.div_ceil(MANY_BLOCK_ELEMS);
            continue;
        }
        // A few waves of blocks; each thread strides over the rest.
        let g = Grid::cover(n, 256);
        let g = Grid::d1(g.grid.0.min(132 * 8), 256);
        let args = Args::new()
            .ptr(x, dev, OP)?
            .raw(out_ptr + 8 * i as u64)
            .u64(n as u64);
        let func = format!("sum_squares_{}", suffix(x.dtype(), OP)?);
        run(dev, &SRC, &[], &func, g, args)?;
    }
    if blocks > 0 {
        let rows = table.len() / 4;
        let grid_x = u32::try_from(blocks)
            .map_err(|_| crate::Error::msg(format!("{OP}: {blocks} blocks exceed u32")))?;
        let dev_table = stream.clone_htod(&table).map_err(cuda_err)?;
        let args = Args::new()
            .raw(dev_table.device_ptr(stream).0)
            .u32(rows as u32)
            .raw(out_ptr);
        // The table is freed (stream-ordered) when `dev_table` drops, after the kernel read it.
        run(
            dev,
            &SRC,
            &[],
            "sum_squares_many_f32",
            Grid::d1(grid_x, 256),
            args,
        )?;
    }
    Ok(out)
}

/// The clip decision of one optimiser step, in device memory: f64 {norm, scale, skip} as
/// `grad_clip_finalize` (cu/sum_squares.cu) writes it.
pub struct DeviceClip {
    buf: CudaSlice<f64>,
    dev: CudaDevice,
}

impl DeviceClip {
    /// The device address of {norm, scale, skip}, for the AdamW kernel.
    pub(crate) fn device_ptr(&self) -> u64 {
        self.buf.device_ptr(self.dev.stream()).0
    }

    /// Reads {norm, scale, skip} back (waits for the work queued before).
    pub fn read(&self) -> Result<[f64; 3]> {
        let v = self.dev.stream().clone_dtoh(&self.buf).map_err(cuda_err)?;
        Ok([v[0], v[1], v[2]])
    }
}

/// Queues the global norm of `xs` (all on one GPU) and the clip decision against `max_norm`
/// (`None`: no clipping); nothing is read back.
pub fn grad_clip(xs: &[&Tensor], max_norm: Option<f64>) -> Result<DeviceClip> {
    const OP: &str = "grad_clip";
    let first = xs
        .first()
        .ok_or_else(|| crate::Error::msg(format!("{OP}: no tensors")))?;
    let dev = device_of(first, OP)?;
    let sums = enqueue_sums(&dev, xs)?;
    let stream = dev.stream();
    let buf = stream.alloc_zeros::<f64>(3).map_err(cuda_err)?;
    let args = Args::new()
        .raw(sums.device_ptr(stream).0)
        .u32(xs.len() as u32)
        .u64(max_norm.unwrap_or(-1.0).to_bits())
        .raw(buf.device_ptr(stream).0);
    run(&dev, &SRC, &[], "grad_clip_finalize", Grid::d1(1, 32), args)?;
    Ok(DeviceClip { buf, dev })
}
