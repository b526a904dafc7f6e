//! The LM head as the RLHF losses use it: per-position log-prob of a target token and entropy of
//! the (temperature-scaled) next-token distribution, and the backward from d(logprob) and
//! d(entropy) to d(final hidden) and the head weight's gradient.
//!
//! The work is one kernels op, `kernels::ops::lm_head` (GEMM + fused log-softmax on row chunks,
//! no per-chunk gathers or uploads). The [N,V] logits are the largest tensor of a step (8k tokens
//! × 152k vocab is 1.2 G elements, 5 GB in f32): at most [`LmHead::max_logits`] of them exist at
//! once. When all N·V fit, the forward keeps them in [`LmHeadOutput`] and the backward reads them
//! (no recompute); otherwise rows go in chunks and the backward recomputes each chunk's logits
//! (one extra matmul). The f32 log-sum-exp and entropy per row are kept between the two.
//!
//! The logits are f32 also when the hidden states and the head weight are bf16 (cuBLAS bf16 in,
//! f32 out): rounding logits to bf16 moves each by up to 2⁻⁹·|logit| (0.02 at a logit of 10),
//! which goes straight into every log-prob (scripts/emulate_bf16_path.py: keeping them f32 lowers
//! the bf16 log-prob error at temperature 1 by 3-9% on the test fixtures). d(logits) is written in
//! the weights' dtype for the two backward GEMMs, whose operands share one dtype.
//!
//! Factorised backward (opt-in, [`LmHead::factorised`]): without an entropy gradient
//! d(logits) = inv_temp · d(logprob)_i · (onehot − p) is row-scaled, so the forward can keep
//! R = onehot − p in the hidden dtype instead of the f32 logits (where the backend supports it:
//! the CPU, and CUDA from sm_90) and the backward scales [N,C] rows around the two GEMMs instead of
//! writing an [N,V] d(logits) (kernels::ops::lm_head). A backward that is given a d(entropy)
//! after such a forward recomputes the logits (correct, one GEMM more). Off by default: measured
//! on the H200 at 8 × 1024 tokens of Qwen2.5-0.5B (docs/benchmarks.md, head helper), the backward
//! gets 1.7 ms faster but the forward 2.7 ms slower (R's kernel reaches 2.1 TB/s, and the logits
//! GEMM in four row chunks loses 0.5 ms).
//!
//! Memory: the forward holds at most `max_logits` f32 logits (kept until the output is dropped
//! when they are all of them); the backward adds d(logits) in the hidden dtype for the same rows
//! (and, when nothing was kept, a chunk of recomputed f32 logits). R takes N·V elements of the
//! hidden dtype (half the f32 logits in bf16) plus, during the forward, an f32 logits scratch of
//! at most `max_logits / 2`.
//!
//! With tied embeddings the head weight is `model.embed_tokens.weight`, so its gradient lands in the
//! embedding's gradient buffer next to the lookup's contribution.

use anyhow::{bail, Context, Result};
use kernels::ops::lm_head::{lm_head_logprobs, lm_head_logprobs_backward, LmHeadGrad, LmHeadSaved};
use kernels::ops::GradStore;
use kernels::{DType, Tensor};

use super::backward::check_grads;
use crate::params::Params;

/// Most logits materialised at once by default (1.5 Gi f32 elements: 6 GiB). 8 × 1024 tokens of
/// a 152k vocabulary (1.25 G logits) fit, so a training step keeps its logits for the backward.
pub const LOGITS_CHUNK_ELEMS: usize = 3 << 29;

/// Per-position results of the LM head, all [N] f32 on the hidden states' device.
pub struct LmHeadOutput {
    /// log p(target) of the temperature-scaled distribution; 0 where the target is `NO_TARGET`.
    pub logprobs: Tensor,
    /// Entropy of the temperature-scaled distribution (every position).
    pub entropy: Tensor,
    /// Log-sum-exp of the scaled logits, kept for the backward.
    pub lse: Tensor,
    /// The [N,V] f32 logits when they all fitted in `max_logits` (read by the backward).
    pub logits: Option<Tensor>,
    /// R = onehot(target) − p [N,V] in the hidden dtype, kept instead of the logits for the
    /// factorised backward (no entropy gradient).
    pub residual: Option<Tensor>,
}

/// The LM head with its settings: the temperature the distribution is scaled by, and how many
/// logits may exist at once.
#[derive(Clone, Copy, Debug)]
pub struct LmHead {
    /// 1 / temperature: logits are multiplied by this before the softmax.
    pub inv_temp: f32,
    /// Most logits materialised at once; rows are processed in chunks below this.
    pub max_logits: usize,
    /// Keep R = onehot − p for the factorised backward instead of the f32 logits; only for
    /// losses without an entropy term (a d(entropy) makes the backward recompute the logits).
    pub factorised: bool,
}

/// `REALIGN_LM_HEAD=factorised` (read once): the factorised backward for every head built by
/// [`LmHead::new`].
fn factorised_from_env() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        let on = std::env::var("REALIGN_LM_HEAD").is_ok_and(|v| v == "factorised");
        if on {
            tracing::info!(
                "REALIGN_LM_HEAD=factorised: the LM head keeps onehot - p, not the logits"
            );
        }
        on
    })
}

impl LmHead {
    /// A head at `temperature` with the default chunk size. `REALIGN_LM_HEAD=factorised` turns
    /// the factorised backward on (for measuring it; off by default).
    pub fn new(temperature: f32) -> LmHead {
        LmHead {
            inv_temp: 1.0 / temperature,
            max_logits: LOGITS_CHUNK_ELEMS,
            factorised: factorised_from_env(),
        }
    }

    /// Log-probs of `targets` [N] (host ids, `NO_TARGET` for none) and entropies under
    /// softmax(logits · inv_temp), logits = hidden [N,C] · Wᵀ with W = lm_head or the tied
    /// embedding.
    pub fn forward(
        &self,
        params: &Params,
        hidden: &Tensor,
        targets: &[u32],
    ) -> Result<LmHeadOutput> {
        let w = head_weight(params)?;
        check_targets(targets, hidden.dims2("lm_head_forward")?.0, w.shape()[0])?;
        let grad = if self.factorised {
            LmHeadGrad::LogprobOnly
        } else {
            LmHeadGrad::WithEntropy
        };
        let rows = lm_head_logprobs(hidden, w, targets, self.inv_temp, self.max_logits, grad)
            .context("LM head forward")?;
        Ok(LmHeadOutput {
            logprobs: rows.logprob,
            entropy: rows.entropy,
            lse: rows.lse,
            logits: rows.logits,
            residual: rows.residual,
        })
    }

    /// Backward of [`LmHead::forward`]: given d(logprob) [N] f32 and optionally d(entropy) [N]
    /// f32, stores the head weight's gradient into `grads` (lm_head, or the embedding when tied;
    /// added or written as `store` says) and returns d(hidden) [N,C] in the hidden states' dtype.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        params: &Params,
        hidden: &Tensor,
        targets: &[u32],
        out: &LmHeadOutput,
        d_logprob: &Tensor,
        d_entropy: Option<&Tensor>,
        grads: &mut Params,
        store: GradStore,
    ) -> Result<Tensor> {
        check_grads(grads)?;
        let w = head_weight(params)?;
        let n = hidden.dims2("lm_head_backward")?.0;
        check_targets(targets, n, w.shape()[0])?;
        for (name, t) in [("d_logprob", Some(d_logprob)), ("d_entropy", d_entropy)] {
            if let Some(t) = t {
                if t.shape() != [n] || t.dtype() != DType::F32 {
                    bail!(
                        "{name} must be [{n}] f32, got {:?} {}",
                        t.shape(),
                        t.dtype()
                    );
                }
            }
        }
        let gw = if params.lm_head.is_some() {
            grads
                .lm_head
                .as_mut()
                .context("the gradient buffer has no lm_head.weight")?
        } else {
            &mut grads.embed
        };
        let mut saved = LmHeadSaved {
            lse: &out.lse,
            entropy: &out.entropy,
            logits: out.logits.as_ref(),
            residual: out.residual.as_ref(),
        };
        if saved.residual.is_some() && d_entropy.is_some() {
            // R cannot give the entropy term's z − E[z]: recompute the logits instead.
            tracing::warn!(
                "LM head backward with d(entropy) after a factorised forward: recomputing the \
                 logits (LmHead::factorised is for losses without an entropy term)"
            );
            saved.residual = None;
        }
        lm_head_logprobs_backward(
            d_logprob,
            d_entropy,
            hidden,
            w,
            targets,
            saved,
            self.inv_temp,
            self.max_logits,
            gw,
            store,
        )
        .context("LM head backward")
    }
}

/// lm_head.weight, or the embedding when tied; an error for a model with only a score head.
fn head_weight(params: &Params) -> Result<&Tensor> {
    if params.lm_head.is_none() && params.score.is_some() {
        bail!("this model has a score head (sequence classification), not an LM head");
    }
    Ok(params.lm_head_weight())
}

fn check_targets(targets: &[u32], n: usize, vocab: usize) -> Result<()> {
    if targets.len() != n {
        bail!("{} targets for {n} positions", targets.len());
    }
    if let Some((i, &t)) = targets
        .iter()
        .enumerate()
        .find(|(_, &t)| t != super::NO_TARGET && t as usize >= vocab)
    {
        bail!("target id {t} at position {i} is outside the vocabulary (size {vocab})");
    }
    Ok(())
}
