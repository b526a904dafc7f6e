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

/// out[N,O] in `dtype` = y[N,O] (f32) + b[O] (b's dtype = `dtype`), rounded once.
pub fn bias_cast(y: &Tensor, b: &Tensor, dtype: DType) -> Result<Tensor> {
    const OP: &str = "bias_cast";
    let dev = device_of(y, OP)?;
    let (n, o) = y.dims2(OP)?;
    let out = empty(&dev, &[n, o], dtype)?;
    let func = match dtype {
        DType::BF16 => "bias_cast_bf16_bf16",
        DType::F32 => "bias_cast_f32_f32",
        DType::U32 => return Err(crate::Error::DType { op: OP, dtype }),
    };
    let dim = |v: usize| {
        u32::try_from(v).map_err(|_| crate::Error::msg(format!("{OP}: dimension {v} exceeds u32")))
    };
    let args = Args::new()
        .ptr(y, &dev, OP)?
        .ptr(b, &dev, OP)?
        .ptr(&out, &dev, OP)?
        .u32(dim(n)?)
        .u32(dim(o)?);
    let items = if o.is_multiple_of(8) {
        (n * o).div_ceil(8)
    } else {
        n * o
    };
    run(&dev, &SRC, &[], func, Grid::cover(items, 256), args)?;
    Ok(out)
}
