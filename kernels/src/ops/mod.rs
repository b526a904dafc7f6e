//! Public ops: shapes, checks and dispatch to the CPU or CUDA backend. One file per op.
//!
//! Every op checks ranks, shapes, dtypes and devices here and returns an [`Error`] naming the op and
//! the bad input; the backends (`crate::cpu::<op>`, `crate::cuda::<op>`) get the same arguments and
//! may assume they are consistent.

use crate::{DType, Error, Result, Tensor};

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
pub mod linear_acc;
pub mod linear_ksplit;
pub mod linear_parts;
pub mod lm_head;
pub mod logsoftmax_gather;
pub mod paged_attention;
pub mod paged_attention_qkv;
pub mod policy_grad;
pub mod qkv_rope_cache;
pub mod rmsnorm;
pub mod rope;
pub mod sampling;
pub mod swiglu;
pub mod swiglu_packed;

pub use adamw::{
    adamw_step, adamw_step_many, adamw_step_many_clipped, AdamWItem, AdamWParams, AdamWScalars,
};
pub use add_rmsnorm::{add_rmsnorm, add_rmsnorm_partials, AddNorm};
pub use attention::{attention, attention_backward, attention_backward_rope};
pub use cast::{bias_cast, cast};
pub use concat::{concat_cols, concat_rows, split_store, write_rows};
pub use elementwise::{add, add_inplace, fill_inplace, fill_many, scale_inplace};
pub use embedding::{
    gather_rows, gather_rows_host_ids, scatter_add_rows, scatter_add_rows_host_ids,
};
pub use grad_norm::{grad_clip, sum_squares, sum_squares_each, ClipDecision, GradClip};
pub use kv_cache::{kv_cache_copy_blocks, kv_cache_write};
pub use linear::{linear, linear_backward, GradStore};
pub use linear_acc::linear_backward_acc;
pub use linear_ksplit::linear_ksplit;
pub use linear_parts::{linear_backward_input, linear_backward_input_acc, linear_backward_weight};
pub use logsoftmax_gather::{logsoftmax_gather, logsoftmax_gather_backward, NO_TARGET};
pub use paged_attention::paged_attention;
pub use paged_attention_qkv::{paged_attention_qkv_fused, QkvInputs};
pub use policy_grad::{policy_logprob_grad, KlGrad, PolicyGradInputs, PolicyGradSpec};
pub use qkv_rope_cache::{qkv_rope, qkv_rope_cache, Qkv, RopeTable};
pub use rmsnorm::{rmsnorm, rmsnorm_backward, rmsnorm_backward_acc, rmsnorm_backward_acc_from};
pub use rope::{rope, rope_backward};
pub use sampling::{read_samples, sample_tokens, sample_tokens_into, SampleSpec};
pub use swiglu::{swiglu, swiglu_backward};
pub use swiglu_packed::swiglu_packed;

/// Errors unless `t` has exactly `shape`.
pub(crate) fn check_shape(op: &'static str, name: &str, t: &Tensor, shape: &[usize]) -> Result<()> {
    if t.shape() == shape {
        Ok(())
    } else {
        Err(Error::shape(
            op,
            format!("{name} must have shape {shape:?}, got {:?}", t.shape()),
        ))
    }
}

/// Errors unless `t` is F32 or BF16.
pub(crate) fn check_float(op: &'static str, t: &Tensor) -> Result<()> {
    if t.dtype().is_float() {
        Ok(())
    } else {
        Err(Error::DType {
            op,
            dtype: t.dtype(),
        })
    }
}

/// Errors unless `t` has dtype `dtype`.
pub(crate) fn check_dtype(op: &'static str, t: &Tensor, dtype: DType) -> Result<()> {
    if t.dtype() == dtype {
        Ok(())
    } else {
        Err(Error::DType {
            op,
            dtype: t.dtype(),
        })
    }
}

/// Errors unless all tensors share the first one's dtype and device.
pub(crate) fn check_same(op: &'static str, first: &Tensor, rest: &[&Tensor]) -> Result<()> {
    for t in rest {
        first.check_same_device(t, op)?;
        if t.dtype() != first.dtype() {
            return Err(Error::msg(format!(
                "{op}: all float inputs must share one dtype, got {} and {}",
                first.dtype(),
                t.dtype()
            )));
        }
    }
    Ok(())
}
