//! Sum of squares on the GPU, accumulated in f64 and copied back as host scalars: one tensor, or
//! many at once (each into its own slot of one device buffer, read back with one synchronisation).

use super::launch::{kernel_source, run, Args, Grid, KernelSource};
use super::{cuda_err, device_of, ptr, suffix};
use crate::{Result, Tensor};

const SRC: KernelSource = kernel_source!("sum_squares");

pub fn sum_squares(x: &Tensor) -> Result<f64> {
    Ok(sum_squares_each(&[x])?[0])
}

/// Elements per block of `sum_squares_many_f32` (SS_BLOCK_ELEMS in cu/sum_squares.cu).
const MANY_BLOCK_ELEMS: usize = 16384;

/// Σ x² of every tensor of `xs` (all on one GPU), in order. The f32 tensors go through one
/// launch (a table of address, length, first block per tensor), others one launch each; every sum
/// lands in its own slot of one f64 buffer, read back once.
pub fn sum_squares_each(xs: &[&Tensor]) -> Result<Vec<f64>> {
    const OP: &str = "sum_squares";
    let Some(first) = xs.first() else {
        return Ok(vec![]);
    };
    let dev = device_of(first, OP)?;
    let stream = dev.stream();
    let out = stream.alloc_zeros::<f64>(xs.len()).map_err(cuda_err)?;
    let out_ptr = {
        use cudarc::driver::DevicePtr;
        out.device_ptr(stream).0
    };
    // Table rows: address, length, first block; the slot index is the row's tensor index.
    let mut table: Vec<u64> = vec![];
    let mut slot_of_row: Vec<u64> = vec![];
    let mut blocks = 0usize;
    for (i, x) in xs.iter().enumerate() {
        let n = x.numel();
        if n == 0 {
            continue;
        }
        if x.dtype() == crate::DType::F32 {
            table.extend([ptr(x, &dev, OP)?, n as u64, blocks as u64]);
            slot_of_row.push(i as u64);
            blocks += n.div_ceil(MANY_BLOCK_ELEMS);
            continue;
        }
        // A few waves of blocks; each thread strides over the rest.
        let g = Grid::cover(n, 256);
        let g = Grid::d1(g.grid.0.min(132 * 8), 256);
        let args = Args::new()
            .ptr(x, &dev, OP)?
            .raw(out_ptr + 8 * i as u64)
            .u64(n as u64);
        let func = format!("sum_squares_{}", suffix(x.dtype(), OP)?);
        run(&dev, &SRC, &[], &func, g, args)?;
    }
    if blocks > 0 {
        let rows = slot_of_row.len();
        // The kernel adds row r's sum into out[r]: sums land in a scratch buffer of one slot per
        // row when rows and tensors differ (empty or non-f32 tensors in between).
        let dense = slot_of_row.iter().enumerate().all(|(r, &i)| r as u64 == i);
        let scratch = if dense {
            None
        } else {
            Some(stream.alloc_zeros::<f64>(rows).map_err(cuda_err)?)
        };
        let dst = match &scratch {
            None => out_ptr,
            Some(s) => {
                use cudarc::driver::DevicePtr;
                s.device_ptr(stream).0
            }
        };
        let grid_x = u32::try_from(blocks)
            .map_err(|_| crate::Error::msg(format!("{OP}: {blocks} blocks exceed u32")))?;
        let dev_table = stream.clone_htod(&table).map_err(cuda_err)?;
        let table_ptr = {
            use cudarc::driver::DevicePtr;
            dev_table.device_ptr(stream).0
        };
        let args = Args::new().raw(table_ptr).u32(rows as u32).raw(dst);
        run(
            &dev,
            &SRC,
            &[],
            "sum_squares_many_f32",
            Grid::d1(grid_x, 256),
            args,
        )?;
        if let Some(s) = scratch {
            let per_row = stream.clone_dtoh(&s).map_err(cuda_err)?;
            let mut host = stream.clone_dtoh(&out).map_err(cuda_err)?;
            for (r, &i) in slot_of_row.iter().enumerate() {
                host[i as usize] = per_row[r];
            }
            return Ok(host);
        }
    }
    stream.clone_dtoh(&out).map_err(cuda_err)
}
