//! KL-penalty reward shaping (Ziegler et al. 2019, InstructGPT): every response token is charged
//! -β · kl_t, and the sequence's score is added on its last masked token:
//!   r_t = -β k(logp_t, logp_ref_t) + [t = last response token of s] · score_s
//! The log-probs are those of the rollout policy (no gradient flows here).

use anyhow::Result;

use crate::layout::{check_cu_seqlens, check_len, seq_ranges};
use crate::objectives::kl::KlEstimator;
use crate::real::Real;

/// Shaped rewards `[N]` and the per-token KL `[N]` (for `kl/mean`).
pub fn kl_shaped_rewards<T: Real>(
    scores: &[T],
    logprob: &[T],
    ref_logprob: &[T],
    mask: &[T],
    cu_seqlens: &[usize],
    beta: f64,
    estimator: KlEstimator,
) -> Result<(Vec<T>, Vec<T>)> {
    let what = "KL reward shaping";
    let n = mask.len();
    check_cu_seqlens(cu_seqlens, n, what)?;
    check_len(logprob, n, "logprob", what)?;
    check_len(ref_logprob, n, "ref_logprob", what)?;
    check_len(scores, cu_seqlens.len() - 1, "scores", what)?;
    let b = T::from_f64(beta);
    let mut rewards = vec![T::zero(); n];
    let mut kl = vec![T::zero(); n];
    for (s, r) in seq_ranges(cu_seqlens).enumerate() {
        let mut last = None;
        for t in r {
            if mask[t].to_f64() > 0.0 {
                kl[t] = estimator.value(logprob[t], ref_logprob[t]);
                rewards[t] = -b * kl[t];
                last = Some(t);
            }
        }
        if let Some(t) = last {
            rewards[t] += scores[s];
        }
    }
    Ok((rewards, kl))
}
