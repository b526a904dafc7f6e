//! cast on the GPU: f32 <-> bf16 (round to nearest even); same dtype is a device copy.

use super::launch::{kernel_source, run, Args, Grid, KernelSource};
use super::{device_of, empty};
use crate::{DType, Result, Tensor};

const SRC: KernelSource = kernel_source!("cast");

pub fn cast(x: &Tensor, dtype: DType) -> Result<Tensor> {
    const OP: &str = "cast";
    let dev = device_of(x, OP)?;
    if x.dtype() == dtype {
        return x.try_clone();
    }
    let y = empty(&dev, x.shape(), dtype)?;
    let func = match (x.dtype(), dtype) {
        (DType::F32, DType::BF16) => "cast_f32_bf16",
        (DType::BF16, DType::F32) => "cast_bf16_f32",
        (from, _) => {
            return Err(crate::Error::DType {
                op: OP,
                dtype: from,
            })
        }
    };
    let n = x.numel();
    let args = Args::new()
        .ptr(x, &dev, OP)?
        .ptr(&y, &dev, OP)?
        .u64(n as u64);
    run(&dev, &SRC, &[], func, Grid::cover(n.div_ceil(8), 256), args)?;
    Ok(y)
}
