//! Elementwise helpers: add, add in place, scale in place (gradient clipping), fill in place.

use crate::{Device, Result, Tensor};

/// `a + b` (same shape, dtype, device).
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    const OP: &str = "add";
    check_pair(OP, a, b)?;
    match a.device() {
        Device::Cpu => crate::cpu::elementwise::add(a, b),
        Device::Cuda(_) => crate::cuda::elementwise::add(a, b),
    }
}

/// `a += b` (same shape, dtype, device).
pub fn add_inplace(a: &mut Tensor, b: &Tensor) -> Result<()> {
    const OP: &str = "add_inplace";
    check_pair(OP, a, b)?;
    match a.device() {
        Device::Cpu => crate::cpu::elementwise::add_inplace(a, b),
        Device::Cuda(_) => crate::cuda::elementwise::add_inplace(a, b),
    }
}

/// `x *= s`.
pub fn scale_inplace(x: &mut Tensor, s: f32) -> Result<()> {
    const OP: &str = "scale_inplace";
    super::check_float(OP, x)?;
    match x.device() {
        Device::Cpu => crate::cpu::elementwise::scale_inplace(x, s),
        Device::Cuda(_) => crate::cuda::elementwise::scale_inplace(x, s),
    }
}

/// Sets every element of `x` to `v`.
pub fn fill_inplace(x: &mut Tensor, v: f32) -> Result<()> {
    const OP: &str = "fill_inplace";
    super::check_float(OP, x)?;
    match x.device() {
        Device::Cpu => crate::cpu::elementwise::fill_inplace(x, v),
        Device::Cuda(_) => crate::cuda::elementwise::fill_inplace(x, v),
    }
}

/// [`fill_inplace`] of every tensor of `xs`; on one GPU with all f32 tensors a single launch
/// (zeroing a model's gradient buffers is one launch, not one per parameter).
pub fn fill_many(xs: &mut [&mut Tensor], v: f32) -> Result<()> {
    const OP: &str = "fill_many";
    for x in xs.iter() {
        super::check_float(OP, x)?;
    }
    let one_gpu_f32 = match xs.first().map(|x| x.device().clone()) {
        Some(d @ Device::Cuda(_)) => xs
            .iter()
            .all(|x| x.device().same(&d) && x.dtype() == crate::DType::F32),
        _ => false,
    };
    if one_gpu_f32 {
        return crate::cuda::elementwise::fill_many_f32(xs, v);
    }
    for x in xs.iter_mut() {
        fill_inplace(x, v)?;
    }
    Ok(())
}

fn check_pair(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    super::check_float(op, a)?;
    super::check_same(op, a, &[b])?;
    super::check_shape(op, "b", b, a.shape())
}
