//! The LM head with its log-softmax, as one op: logits = hidden · Wᵀ (f32, also from bf16 inputs),
//! then per row the log-prob of a target, the entropy and the log-sum-exp of z = logits · inv_temp;
//! and the backward from d(logprob), d(entropy) to d(hidden) and the head weight's gradient.
//!
//! Why one op: the [N,V] logits are the largest tensor of a training step (8k tokens × 152k vocab
//! = 5 GB in f32). Composed from `linear` + `logsoftmax_gather`, every row chunk needed its own
//! gathered hidden rows, uploaded targets and scattered results; here the backends walk row
//! chunks by offsetting into the whole tensors, and the backward writes d(logits) straight in the
//! GEMM dtype.
//!
//! Chunks: at most `max_logits` logits exist at once. When all N·V fit, the forward keeps them
//! ([`LmHeadRows::logits`]) and the backward reads them instead of recomputing (one GEMM fewer);
//! otherwise rows go in chunks and the backward recomputes each chunk's logits.
//!
//! Factorised backward: with d(logprob) only (no entropy term), d(logits)_i = s_i (onehot(t_i) − p_i)
//! with s_i = inv_temp · dlogprob_i is row-scaled. Asked for [`LmHeadGrad::LogprobOnly`], a backend
//! may keep R = onehot − p in the hidden dtype ([`LmHeadRows::residual`], written by the forward
//! while it has the logits) instead of the f32 logits; the backward is then
//! d(hidden) = diag(s) (R · W) and dW += Rᵀ · (diag(s) hidden), the scaling on [N,C] rows: no pass
//! over [N,V] besides the two GEMMs. R rounded to bf16 has the same relative error as s·R rounded.
//!
//! Arithmetic: the same as `linear_out(.., F32)` followed by `logsoftmax_gather` /
//! `logsoftmax_gather_backward`, except that the CUDA backward takes E[z] = lse − entropy from the
//! forward instead of summing it again, and writes d(logits) in the hidden states' dtype for the
//! two backward GEMMs (one bf16 rounding, as `cast` of the f32 d(logits) did).

use super::{check_dtype, check_float, check_same, check_shape, GradStore, NO_TARGET};
use crate::{DType, Device, Error, Result, Tensor};

/// Per-row results of [`lm_head_logprobs`], all [N] f32, plus the logits when they were kept.
#[derive(Debug)]
pub struct LmHeadRows {
    /// log p(target) under softmax(z); 0 where the target is [`NO_TARGET`].
    pub logprob: Tensor,
    /// Entropy of softmax(z).
    pub entropy: Tensor,
    /// log Σ_v e^z_v.
    pub lse: Tensor,
    /// The f32 logits [N,V] (unscaled), kept for the backward when N·V ≤ `max_logits` and no
    /// residual was kept.
    pub logits: Option<Tensor>,
    /// R = onehot(target) − softmax(z) [N,V] in hidden's dtype (a row of −p where the target is
    /// [`NO_TARGET`]), kept instead of the logits for [`LmHeadGrad::LogprobOnly`] when N·V ≤
    /// `max_logits` and the backend supports it.
    pub residual: Option<Tensor>,
}

/// Which gradients the backward of a forward will be given; decides what the forward keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LmHeadGrad {
    /// d(logprob) and d(entropy): the backward needs the logits (kept, or recomputed).
    WithEntropy,
    /// d(logprob) only: d(logits) is row-scaled, so the forward may keep R = onehot − p.
    LogprobOnly,
}

/// hidden[N,C], w[V,C] (same float dtype), host targets[N] -> per-row logprob, entropy, lse of
/// z = (hidden · wᵀ) · inv_temp, with at most `max_logits` logits materialised at once (one row
/// at least). Targets ≥ V other than [`NO_TARGET`] are an error. `grad` says which gradients the
/// backward will get (see [`LmHeadGrad`]).
pub fn lm_head_logprobs(
    hidden: &Tensor,
    w: &Tensor,
    targets: &[u32],
    inv_temp: f32,
    max_logits: usize,
    grad: LmHeadGrad,
) -> Result<LmHeadRows> {
    const OP: &str = "lm_head_logprobs";
    check_inputs(OP, hidden, w, targets, inv_temp)?;
    match hidden.device() {
        Device::Cpu => {
            crate::cpu::lm_head::lm_head_logprobs(hidden, w, targets, inv_temp, max_logits, grad)
        }
        Device::Cuda(_) => {
            crate::cuda::lm_head::lm_head_logprobs(hidden, w, targets, inv_temp, max_logits, grad)
        }
    }
}

/// The forward's results the backward reads (from [`LmHeadRows`]).
#[derive(Clone, Copy)]
pub struct LmHeadSaved<'a> {
    pub lse: &'a Tensor,
    pub entropy: &'a Tensor,
    pub logits: Option<&'a Tensor>,
    pub residual: Option<&'a Tensor>,
}

impl LmHeadRows {
    pub fn saved(&self) -> LmHeadSaved<'_> {
        LmHeadSaved {
            lse: &self.lse,
            entropy: &self.entropy,
            logits: self.logits.as_ref(),
            residual: self.residual.as_ref(),
        }
    }
}

/// Backward of [`lm_head_logprobs`] (same hidden, w, targets, inv_temp, max_logits, and what its
/// output saved): dlogprob[N] f32 and optional dentropy[N] f32 -> d(hidden)[N,C] in hidden's
/// dtype; the head weight's gradient goes into dw[V,C] f32, added or written as `store` says.
/// With a kept residual (factorised backward) `dentropy` must be None.
#[allow(clippy::too_many_arguments)]
pub fn lm_head_logprobs_backward(
    dlogprob: &Tensor,
    dentropy: Option<&Tensor>,
    hidden: &Tensor,
    w: &Tensor,
    targets: &[u32],
    fwd: LmHeadSaved<'_>,
    inv_temp: f32,
    max_logits: usize,
    dw: &mut Tensor,
    store: GradStore,
) -> Result<Tensor> {
    const OP: &str = "lm_head_logprobs_backward";
    check_inputs(OP, hidden, w, targets, inv_temp)?;
    let n = targets.len();
    for (name, t) in [
        ("dlogprob", Some(dlogprob)),
        ("dentropy", dentropy),
        ("lse", Some(fwd.lse)),
        ("entropy", Some(fwd.entropy)),
    ] {
        if let Some(t) = t {
            check_dtype(OP, t, DType::F32)?;
            hidden.check_same_device(t, OP)?;
            check_shape(OP, name, t, &[n])?;
        }
    }
    if let Some(l) = fwd.logits {
        check_dtype(OP, l, DType::F32)?;
        hidden.check_same_device(l, OP)?;
        check_shape(OP, "kept logits", l, &[n, w.shape()[0]])?;
    }
    if let Some(r) = fwd.residual {
        check_dtype(OP, r, hidden.dtype())?;
        hidden.check_same_device(r, OP)?;
        check_shape(OP, "kept residual", r, &[n, w.shape()[0]])?;
        if dentropy.is_some() {
            return Err(Error::msg(format!(
                "{OP}: the forward kept onehot - p for a d(logprob)-only backward, but a \
                 d(entropy) was given (run the forward with LmHeadGrad::WithEntropy)"
            )));
        }
    }
    check_dtype(OP, dw, DType::F32)?;
    hidden.check_same_device(dw, OP)?;
    check_shape(OP, "dw", dw, w.shape())?;
    match hidden.device() {
        Device::Cpu => crate::cpu::lm_head::lm_head_logprobs_backward(
            dlogprob, dentropy, hidden, w, targets, fwd, inv_temp, max_logits, dw, store,
        ),
        Device::Cuda(_) => crate::cuda::lm_head::lm_head_logprobs_backward(
            dlogprob, dentropy, hidden, w, targets, fwd, inv_temp, max_logits, dw, store,
        ),
    }
}

/// Rows per chunk so that a chunk holds at most `max_logits` logits (one row at least).
pub fn chunk_rows(vocab: usize, max_logits: usize) -> usize {
    (max_logits / vocab.max(1)).max(1)
}

fn check_inputs(
    op: &'static str,
    hidden: &Tensor,
    w: &Tensor,
    targets: &[u32],
    inv_temp: f32,
) -> Result<()> {
    check_float(op, hidden)?;
    check_same(op, hidden, &[w])?;
    let (n, c) = hidden.dims2(op)?;
    let (v, wc) = w.dims2(op)?;
    if wc != c || v == 0 {
        return Err(Error::shape(
            op,
            format!(
                "w must have shape [V > 0, {c}] for hidden {:?}, got {:?}",
                hidden.shape(),
                w.shape()
            ),
        ));
    }
    if targets.len() != n {
        return Err(Error::shape(
            op,
            format!("{} targets for {n} rows of hidden", targets.len()),
        ));
    }
    if let Some((i, &t)) = targets
        .iter()
        .enumerate()
        .find(|(_, &t)| t != NO_TARGET && t as usize >= v)
    {
        return Err(Error::msg(format!(
            "{op}: target {t} at position {i} is out of range for a vocabulary of {v}"
        )));
    }
    if !(inv_temp.is_finite() && inv_temp > 0.0) {
        return Err(Error::msg(format!(
            "{op}: inv_temp must be a positive number, got {inv_temp}"
        )));
    }
    Ok(())
}
