//! Sum of squares on the GPU, accumulated in f64 and copied back as one host scalar.

use super::launch::{kernel_source, run, Args, Grid, KernelSource};
use super::{cuda_err, device_of, suffix};
use crate::{Result, Tensor};

const SRC: KernelSource = kernel_source!("sum_squares");

pub fn sum_squares(x: &Tensor) -> Result<f64> {
    const OP: &str = "sum_squares";
    let dev = device_of(x, OP)?;
    let n = x.numel();
    if n == 0 {
        return Ok(0.0);
    }
    let stream = dev.stream();
    let out = stream.alloc_zeros::<f64>(1).map_err(cuda_err)?;
    let out_ptr = {
        use cudarc::driver::DevicePtr;
        out.device_ptr(stream).0
    };
    // A few waves of blocks; each thread strides over the rest.
    let g = Grid::cover(n, 256);
    let g = Grid::d1(g.grid.0.min(132 * 8), 256);
    let args = Args::new().ptr(x, &dev, OP)?.raw(out_ptr).u64(n as u64);
    let func = format!("sum_squares_{}", suffix(x.dtype(), OP)?);
    run(&dev, &SRC, &[], &func, g, args)?;
    let host = stream.clone_dtoh(&out).map_err(cuda_err)?;
    Ok(host[0])
}
