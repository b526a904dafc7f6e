//! REINFORCE++ (Hu 2025): token-level discounted returns of the shaped rewards, normalised over
//! the whole batch (not per group), no critic.
//!   G_t = r_t + γ G_{t+1} over a sequence's masked tokens (G after the last token = 0)
//!   A_t = (G_t - mean_batch(G)) / sqrt(var_batch(G) + ε)
//! The "baseline" variant subtracts each prompt's mean score from the scores before the rewards
//! are shaped ([`super::group::subtract_group_mean`]); the batch normalisation stays.

use anyhow::{bail, Result};

use super::whiten::masked_whiten;
use crate::layout::{check_cu_seqlens, check_len, seq_ranges};
use crate::real::Real;

/// Discounted reward-to-go per token, reset at each sequence end. `[N]` -> `[N]`.
pub fn discounted_returns<T: Real>(
    rewards: &[T],
    mask: &[T],
    cu_seqlens: &[usize],
    gamma: f64,
) -> Result<Vec<T>> {
    check_cu_seqlens(cu_seqlens, mask.len(), "discounted returns")?;
    check_len(rewards, mask.len(), "rewards", "discounted returns")?;
    if !(0.0..=1.0).contains(&gamma) {
        bail!("discounted returns: gamma must be in [0, 1], got {gamma}");
    }
    let g = T::from_f64(gamma);
    let mut out = vec![T::zero(); mask.len()];
    for r in seq_ranges(cu_seqlens) {
        let mut acc = T::zero();
        for t in r.rev() {
            if mask[t].to_f64() > 0.0 {
                acc = rewards[t] + g * acc;
                out[t] = acc;
            }
        }
    }
    Ok(out)
}

/// REINFORCE++ advantages and the (unnormalised) returns, both `[N]`.
pub fn reinforce_pp_advantages<T: Real>(
    rewards: &[T],
    mask: &[T],
    cu_seqlens: &[usize],
    gamma: f64,
) -> Result<(Vec<T>, Vec<T>)> {
    let returns = discounted_returns(rewards, mask, cu_seqlens, gamma)?;
    let adv = masked_whiten(&returns, mask, true, 1e-8)?;
    Ok((adv, returns))
}
