//! Fused log-softmax + gather + entropy over the vocabulary, without materialising probabilities.
//!
//! For each row n with z = logits[n] · inv_temp (inv_temp = 1 / sampling temperature):
//! lse = log Σ_v e^z_v, logprob = z[target] − lse, entropy = −Σ_v p_v log p_v with p = e^(z − lse).
//! A target of [`NO_TARGET`] (u32::MAX) marks a position without a next token: its logprob is 0
//! and its logprob gradient is ignored (entropy is still computed).

use super::{check_dtype, check_float, check_shape};
use crate::{DType, Device, Error, Result, Tensor};

/// Target id meaning "no target at this position".
pub const NO_TARGET: u32 = u32::MAX;

/// logits[N,V], targets[N] U32 -> (logprob[N], entropy[N], lse[N]), all F32, of z = logits·inv_temp.
/// Targets ≥ V other than [`NO_TARGET`] are an error.
pub fn logsoftmax_gather(
    logits: &Tensor,
    targets: &Tensor,
    inv_temp: f32,
) -> Result<(Tensor, Tensor, Tensor)> {
    const OP: &str = "logsoftmax_gather";
    check_inputs(OP, logits, targets, inv_temp)?;
    match logits.device() {
        Device::Cpu => crate::cpu::logsoftmax_gather::logsoftmax_gather(logits, targets, inv_temp),
        Device::Cuda(_) => crate::cuda::logsoftmax::logsoftmax_gather(logits, targets, inv_temp),
    }
}

/// Backward: dlogprob[N] F32 and optional dentropy[N] F32 (the gradients of the loss with respect
/// to the forward's logprob and entropy), with the forward's logits, targets and lse ->
/// dlogits[N,V] in the logits' dtype.
pub fn logsoftmax_gather_backward(
    dlogprob: &Tensor,
    dentropy: Option<&Tensor>,
    logits: &Tensor,
    targets: &Tensor,
    lse: &Tensor,
    inv_temp: f32,
) -> Result<Tensor> {
    const OP: &str = "logsoftmax_gather_backward";
    check_inputs(OP, logits, targets, inv_temp)?;
    let (n, _v) = logits.dims2(OP)?;
    for (name, t) in [
        ("dlogprob", Some(dlogprob)),
        ("lse", Some(lse)),
        ("dentropy", dentropy),
    ] {
        if let Some(t) = t {
            check_dtype(OP, t, DType::F32)?;
            logits.check_same_device(t, OP)?;
            check_shape(OP, name, t, &[n])?;
        }
    }
    match logits.device() {
        Device::Cpu => crate::cpu::logsoftmax_gather::logsoftmax_gather_backward(
            dlogprob, dentropy, logits, targets, lse, inv_temp,
        ),
        Device::Cuda(_) => crate::cuda::logsoftmax::logsoftmax_gather_backward(
            dlogprob, dentropy, logits, targets, lse, inv_temp,
        ),
    }
}

fn check_inputs(op: &'static str, logits: &Tensor, targets: &Tensor, inv_temp: f32) -> Result<()> {
    check_float(op, logits)?;
    let (n, v) = logits.dims2(op)?;
    if v == 0 {
        return Err(Error::shape(
            op,
            "logits must have at least one column (V > 0)",
        ));
    }
    if !(inv_temp.is_finite() && inv_temp > 0.0) {
        return Err(Error::msg(format!(
            "{op}: inv_temp must be a positive number, got {inv_temp}"
        )));
    }
    check_dtype(op, targets, DType::U32)?;
    logits.check_same_device(targets, op)?;
    check_shape(op, "targets", targets, &[n])
}
