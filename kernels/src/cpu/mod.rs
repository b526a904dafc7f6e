//! CPU f32 reference implementations, one file per op.
//!
//! Each `cpu::<op>` module has Tensor-level entry points with the same arguments as the public op
//! (shapes already checked by `ops::<op>`); where other code can use the arithmetic on raw slices
//! (e.g. `linear`), a slice-level function too.
//! Only F32 is computed here: a BF16 input is an `Error::DType` (except in `cast`, and the bf16
//! working copy written by `adamw_step`).

use crate::{Device, Error, Result, Storage, Tensor};

pub mod adamw;
pub mod add_rmsnorm;
pub mod attention;
pub mod cast;
pub mod concat;
pub mod elementwise;
pub mod embedding;
pub mod grad_norm;
pub mod kv_cache;
pub mod linear;
pub mod linear_ksplit;
pub mod lm_head;
pub mod logsoftmax_gather;
pub mod paged_attention;
pub mod policy_grad;
pub mod qkv_rope_cache;
pub mod rmsnorm;
pub mod rope;
pub mod sampling;
pub mod swiglu;
pub mod swiglu_packed;

/// The f32 data of a CPU tensor, or `Error::DType` naming `op`.
pub(crate) fn f32s<'a>(op: &'static str, t: &'a Tensor) -> Result<&'a [f32]> {
    match t.storage() {
        Storage::CpuF32(v) => Ok(v),
        _ => Err(not_f32(op, t)),
    }
}

/// The f32 data of a CPU tensor, mutably, or `Error::DType` naming `op`.
pub(crate) fn f32s_mut<'a>(op: &'static str, t: &'a mut Tensor) -> Result<&'a mut [f32]> {
    let err = not_f32(op, t);
    match t.storage_mut() {
        Storage::CpuF32(v) => Ok(v),
        _ => Err(err),
    }
}

/// The u32 data of a CPU tensor, or `Error::DType` naming `op`.
pub(crate) fn u32s<'a>(op: &'static str, t: &'a Tensor) -> Result<&'a [u32]> {
    match t.storage() {
        Storage::CpuU32(v) => Ok(v),
        _ => Err(Error::DType {
            op,
            dtype: t.dtype(),
        }),
    }
}

fn not_f32(op: &'static str, t: &Tensor) -> Error {
    if t.device().is_cpu() {
        Error::DType {
            op,
            dtype: t.dtype(),
        }
    } else {
        Error::msg(format!(
            "{op}: expected a cpu tensor, got one on {}",
            t.device()
        ))
    }
}

/// Wraps host f32 data as a CPU tensor.
pub(crate) fn tensor(data: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
    Tensor::from_storage(Storage::CpuF32(data), shape, Device::Cpu)
}
