//! Sum of squares on the GPU, accumulated in f64 and copied back as host scalars: one tensor, or
//! many at once (each into its own slot of one device buffer, read back with one synchronisation).

use super::launch::{kernel_source, run, Args, Grid, KernelSource};
use super::{cuda_err, device_of, suffix};
use crate::{Result, Tensor};

const SRC: KernelSource = kernel_source!("sum_squares");

pub fn sum_squares(x: &Tensor) -> Result<f64> {
    Ok(sum_squares_each(&[x])?[0])
}

/// Σ x² of every tensor of `xs` (all on one GPU), in order.
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
    for (i, x) in xs.iter().enumerate() {
        let n = x.numel();
        if n == 0 {
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
    stream.clone_dtoh(&out).map_err(cuda_err)
}
