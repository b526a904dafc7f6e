//! Loss aggregation: how per-token losses l_t become one scalar.
//!
//! Every token-level objective is written as `loss = Σ_t w_t · l_t`, with per-token weights w_t
//! computed here. That one form covers all aggregation modes, makes the gradient of the
//! aggregation trivial (∂loss/∂l_t = w_t), and makes gradient accumulation exact: the weights use
//! denominators counted over the whole mini-batch (all micro-batches, all data-parallel ranks), so
//! the micro-batch losses and gradients simply add up to those of the full mini-batch.
//!
//! With m_t the mask, n_s the number of masked tokens of sequence s, N_tok and N_seq the global
//! counts (see [`Normaliser`]):
//! - token-mean:            w_t = m_t / N_tok
//! - seq-mean-token-mean:   w_t = m_t / (n_s · N_seq)
//! - seq-mean-token-sum:    w_t = m_t / N_seq
//! - seq-mean-token-sum-norm (Dr.GRPO): w_t = m_t / (C · N_seq), C a constant (typically the
//!   maximum response length), so that no sequence-length bias enters the gradient.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::layout::{check_cu_seqlens, check_len, seq_ranges};
use crate::real::Real;

/// How per-token losses are reduced to the scalar loss (config names as in veRL).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "kebab-case")]
pub enum LossAgg {
    TokenMean,
    SeqMeanTokenMean,
    SeqMeanTokenSum,
    /// Dr.GRPO: token sums divided by a constant, then averaged over sequences.
    SeqMeanTokenSumNorm {
        constant: f64,
    },
}

impl LossAgg {
    /// Parses the config name (`token_mean`, `seq_mean_token_mean`, `seq_mean_token_sum`,
    /// `token_sum_norm` for Dr.GRPO; veRL's dashed spellings too). Dr.GRPO takes its constant
    /// separately (typically the maximum number of new tokens).
    pub fn from_name(name: &str, norm_constant: f64) -> Result<LossAgg> {
        Ok(match name.replace('-', "_").as_str() {
            "token_mean" => LossAgg::TokenMean,
            "seq_mean_token_mean" => LossAgg::SeqMeanTokenMean,
            "seq_mean_token_sum" => LossAgg::SeqMeanTokenSum,
            "token_sum_norm" | "seq_mean_token_sum_norm" => LossAgg::SeqMeanTokenSumNorm {
                constant: norm_constant,
            },
            _ => bail!(
                "unknown loss_agg `{name}` (expected token_mean, seq_mean_token_mean, \
                 seq_mean_token_sum or token_sum_norm)"
            ),
        })
    }
}

/// Global denominators of a mini-batch: masked tokens and sequences with at least one masked
/// token, counted over every micro-batch and rank that contributes to one optimiser step.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Normaliser {
    pub tokens: f64,
    pub seqs: f64,
}

impl Normaliser {
    /// Counts of one micro-batch (the global normaliser is the sum over micro-batches / ranks).
    pub fn count<T: Real>(mask: &[T], cu_seqlens: &[usize]) -> Result<Normaliser> {
        check_cu_seqlens(cu_seqlens, mask.len(), "normaliser")?;
        let mut n = Normaliser::default();
        for r in seq_ranges(cu_seqlens) {
            let toks: f64 = mask[r].iter().map(|m| m.to_f64()).sum();
            n.tokens += toks;
            if toks > 0.0 {
                n.seqs += 1.0;
            }
        }
        Ok(n)
    }

    /// Sum of two partial counts.
    pub fn plus(self, other: Normaliser) -> Normaliser {
        Normaliser {
            tokens: self.tokens + other.tokens,
            seqs: self.seqs + other.seqs,
        }
    }
}

/// Per-token weights w_t with `loss = Σ_t w_t l_t` (see the module comment).
pub fn token_weights<T: Real>(
    mask: &[T],
    cu_seqlens: &[usize],
    agg: LossAgg,
    norm: &Normaliser,
) -> Result<Vec<T>> {
    check_cu_seqlens(cu_seqlens, mask.len(), "loss aggregation")?;
    if mask.iter().any(|m| !(m.to_f64() >= 0.0)) {
        bail!(
            "loss aggregation: the mask must be non-negative (1 for counted tokens, 0 otherwise)"
        );
    }
    let local = Normaliser::count(mask, cu_seqlens)?;
    if local.tokens > norm.tokens + 1e-6 || local.seqs > norm.seqs + 1e-6 {
        bail!(
            "loss aggregation: the global normaliser ({} tokens, {} sequences) is smaller than this \
             micro-batch ({} tokens, {} sequences)",
            norm.tokens,
            norm.seqs,
            local.tokens,
            local.seqs
        );
    }
    let mut w = vec![T::zero(); mask.len()];
    if local.tokens == 0.0 {
        return Ok(w);
    }
    match agg {
        LossAgg::TokenMean => {
            let inv = 1.0 / norm.tokens;
            for (wt, m) in w.iter_mut().zip(mask) {
                *wt = T::from_f64(m.to_f64() * inv);
            }
        }
        LossAgg::SeqMeanTokenMean => {
            for r in seq_ranges(cu_seqlens) {
                let n_s: f64 = mask[r.clone()].iter().map(|m| m.to_f64()).sum();
                if n_s == 0.0 {
                    continue;
                }
                let inv = 1.0 / (n_s * norm.seqs);
                for t in r {
                    w[t] = T::from_f64(mask[t].to_f64() * inv);
                }
            }
        }
        LossAgg::SeqMeanTokenSum | LossAgg::SeqMeanTokenSumNorm { .. } => {
            let c = match agg {
                LossAgg::SeqMeanTokenSumNorm { constant } => {
                    if !(constant > 0.0) {
                        bail!("loss aggregation: the Dr.GRPO constant must be > 0, got {constant}");
                    }
                    constant
                }
                _ => 1.0,
            };
            let inv = 1.0 / (c * norm.seqs);
            for (wt, m) in w.iter_mut().zip(mask) {
                *wt = T::from_f64(m.to_f64() * inv);
            }
        }
    }
    Ok(w)
}

/// Checks a per-token input's length against the mask, naming it in the error.
pub(crate) fn check_token_input<T>(xs: &[T], n: usize, name: &str, what: &str) -> Result<()> {
    check_len(xs, n, name, what)
}
