//! The LM head as the RLHF losses use it: per-position log-prob of a target token and entropy of
//! the (temperature-scaled) next-token distribution, and the backward from d(logprob) and
//! d(entropy) to d(final hidden) and the head weight's gradient.
//!
//! The [N,V] logits are the largest tensor of a step (8k tokens × 152k vocab is 1.2 G elements), so
//! they are never held whole when that would be large: rows are processed in chunks of at most
//! [`LOGITS_CHUNK_ELEMS`] logits, and the backward recomputes each chunk's logits (one extra matmul)
//! instead of keeping them. Only the f32 log-sum-exp per row is kept between forward and backward.
//!
//! The logits are f32 also when the hidden states and the head weight are bf16 (cuBLAS bf16 in,
//! f32 out): rounding logits to bf16 moves each by up to 2⁻⁹·|logit| (0.02 at a logit of 10),
//! which goes straight into every log-prob (scripts/emulate_bf16_path.py: keeping them f32 lowers
//! the bf16 log-prob error at temperature 1 by 3-9% on the test fixtures). d(logits) is rounded
//! to the weights' dtype for the two backward GEMMs, whose operands share one dtype.
//!
//! Memory: a chunk holds at most [`LOGITS_CHUNK_ELEMS`] f32 logits (256 MiB); the backward holds
//! a chunk's logits and their f32 gradient at once (512 MiB), then the gradient's bf16 copy.
//!
//! With tied embeddings the head weight is `model.embed_tokens.weight`, so its gradient lands in the
//! embedding's gradient buffer next to the lookup's contribution.

use anyhow::{bail, Context, Result};
use kernels::ops::linear::linear_out;
use kernels::ops::{
    cast, gather_rows, linear_backward, logsoftmax_gather, logsoftmax_gather_backward,
    scatter_add_rows,
};
use kernels::{DType, Device, Tensor};

use super::backward::check_grads;
use crate::params::Params;

/// Most logits materialised at once (64 Mi f32 elements: 256 MiB).
pub const LOGITS_CHUNK_ELEMS: usize = 64 << 20;

/// Per-position results of the LM head, all [N] f32 on the hidden states' device.
pub struct LmHeadOutput {
    /// log p(target) of the temperature-scaled distribution; 0 where the target is `NO_TARGET`.
    pub logprobs: Tensor,
    /// Entropy of the temperature-scaled distribution (every position).
    pub entropy: Tensor,
    /// Log-sum-exp of the scaled logits, kept for the backward.
    pub lse: Tensor,
}

/// The LM head with its settings: the temperature the distribution is scaled by, and how many
/// logits may exist at once.
#[derive(Clone, Copy, Debug)]
pub struct LmHead {
    /// 1 / temperature: logits are multiplied by this before the softmax.
    pub inv_temp: f32,
    /// Most logits materialised at once; rows are processed in chunks below this.
    pub max_logits: usize,
}

impl LmHead {
    /// A head at `temperature` with the default chunk size.
    pub fn new(temperature: f32) -> LmHead {
        LmHead {
            inv_temp: 1.0 / temperature,
            max_logits: LOGITS_CHUNK_ELEMS,
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
        lm_head_forward(params, hidden, targets, self.inv_temp, self.max_logits)
    }

    /// Backward of [`LmHead::forward`]: given d(logprob) [N] f32 and optionally d(entropy) [N]
    /// f32, accumulates the head weight's gradient into `grads` (lm_head, or the embedding when
    /// tied) and returns d(hidden) [N,C] in the hidden states' dtype.
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
    ) -> Result<Tensor> {
        lm_head_backward(
            params,
            hidden,
            targets,
            self.inv_temp,
            self.max_logits,
            out,
            d_logprob,
            d_entropy,
            grads,
        )
    }
}

fn lm_head_forward(
    params: &Params,
    hidden: &Tensor,
    targets: &[u32],
    inv_temp: f32,
    max_logits: usize,
) -> Result<LmHeadOutput> {
    let w = head_weight(params)?;
    let (n, _c) = hidden.dims2("lm_head_forward")?;
    check_targets(targets, n, w.shape()[0])?;
    let device = hidden.device();
    let chunks = row_chunks(n, w.shape()[0], max_logits);
    if chunks.len() == 1 {
        let logits = logits_of(hidden, w)?; // [N,V] f32
        let t = Tensor::from_u32(targets.to_vec(), &[n], device)?;
        let (logprobs, entropy, lse) = logsoftmax_gather(&logits, &t, inv_temp)?;
        return Ok(LmHeadOutput {
            logprobs,
            entropy,
            lse,
        });
    }
    // Per-row f32 results are scattered into [N,1] columns, then viewed as [N].
    let mut logprobs = Tensor::zeros(&[n, 1], DType::F32, device)?;
    let mut entropy = Tensor::zeros(&[n, 1], DType::F32, device)?;
    let mut lse = Tensor::zeros(&[n, 1], DType::F32, device)?;
    for r in chunks {
        let m = r.len();
        let rows = row_ids(r.clone(), device)?;
        let h = gather_rows(hidden, &rows)?; // [m,C]
        let logits = logits_of(&h, w)?; // [m,V] f32
        let t = Tensor::from_u32(targets[r].to_vec(), &[m], device)?;
        let (lp, ent, ls) = logsoftmax_gather(&logits, &t, inv_temp)?;
        scatter_add_rows(&mut logprobs, &rows, &lp.reshape(&[m, 1])?)?; // [m] -> [m,1]
        scatter_add_rows(&mut entropy, &rows, &ent.reshape(&[m, 1])?)?;
        scatter_add_rows(&mut lse, &rows, &ls.reshape(&[m, 1])?)?;
    }
    Ok(LmHeadOutput {
        logprobs: logprobs.reshape(&[n])?, // [N,1] -> [N]
        entropy: entropy.reshape(&[n])?,
        lse: lse.reshape(&[n])?,
    })
}

#[allow(clippy::too_many_arguments)]
fn lm_head_backward(
    params: &Params,
    hidden: &Tensor,
    targets: &[u32],
    inv_temp: f32,
    max_logits: usize,
    out: &LmHeadOutput,
    d_logprob: &Tensor,
    d_entropy: Option<&Tensor>,
    grads: &mut Params,
) -> Result<Tensor> {
    check_grads(grads)?;
    let w = head_weight(params)?;
    let (n, c) = hidden.dims2("lm_head_backward")?;
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
    let device = hidden.device();
    let chunks = row_chunks(n, w.shape()[0], max_logits);
    if chunks.len() == 1 {
        let logits = logits_of(hidden, w)?; // [N,V] f32, recomputed
        let t = Tensor::from_u32(targets.to_vec(), &[n], device)?;
        let d_logits =
            logsoftmax_gather_backward(d_logprob, d_entropy, &logits, &t, &out.lse, inv_temp)?;
        drop(logits);
        let d_logits = in_dtype(d_logits, hidden.dtype())?;
        return Ok(linear_backward(&d_logits, hidden, w, gw, None)?);
    }
    // d(hidden) chunks are scattered into an f32 [N,C] buffer, then cast to the hidden dtype.
    let mut d_hidden = Tensor::zeros(&[n, c], DType::F32, device)?;
    let column = |t: &Tensor, rows: &Tensor, m: usize| -> Result<Tensor> {
        // [N] -> [N,1] -> gather -> [m,1] -> [m]
        let col = t.try_clone()?.reshape(&[n, 1])?;
        Ok(gather_rows(&col, rows)?.reshape(&[m])?)
    };
    for r in chunks {
        let m = r.len();
        let rows = row_ids(r.clone(), device)?;
        let h = gather_rows(hidden, &rows)?; // [m,C]
        let logits = logits_of(&h, w)?; // [m,V] f32, recomputed
        let t = Tensor::from_u32(targets[r].to_vec(), &[m], device)?;
        let dlp = column(d_logprob, &rows, m)?;
        let dent = d_entropy.map(|d| column(d, &rows, m)).transpose()?;
        let lse = column(&out.lse, &rows, m)?;
        let d_logits =
            logsoftmax_gather_backward(&dlp, dent.as_ref(), &logits, &t, &lse, inv_temp)?;
        drop(logits);
        let d_logits = in_dtype(d_logits, hidden.dtype())?;
        let dh = linear_backward(&d_logits, &h, w, gw, None)?; // [m,C]
        scatter_add_rows(&mut d_hidden, &rows, &dh)?;
    }
    if hidden.dtype() == DType::F32 {
        Ok(d_hidden)
    } else {
        Ok(cast(&d_hidden, hidden.dtype())?)
    }
}

/// logits [m,V] f32 = hidden [m,C] · Wᵀ, unrounded whatever the hidden dtype.
fn logits_of(hidden: &Tensor, w: &Tensor) -> Result<Tensor> {
    Ok(linear_out(hidden, w, None, DType::F32)?)
}

/// `t` cast to `dtype` (a no-op when it already is).
fn in_dtype(t: Tensor, dtype: DType) -> Result<Tensor> {
    Ok(if t.dtype() == dtype {
        t
    } else {
        cast(&t, dtype)?
    })
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

/// Row ranges such that each chunk's logits hold at most `max_logits` elements (one row at
/// least).
fn row_chunks(n: usize, vocab: usize, max_logits: usize) -> Vec<std::ops::Range<usize>> {
    let rows = (max_logits / vocab.max(1)).max(1);
    (0..n).step_by(rows).map(|s| s..(s + rows).min(n)).collect()
}

fn row_ids(r: std::ops::Range<usize>, device: &Device) -> Result<Tensor> {
    let m = r.len();
    Ok(Tensor::from_u32(
        r.map(|i| i as u32).collect(),
        &[m],
        device,
    )?)
}
