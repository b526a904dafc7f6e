//! GAE(γ, λ) (Schulman et al. 2016) over packed sequences, with EOS-aware bootstrapping.
//!
//! Inside each sequence, only masked (response) tokens are steps; values[t] is V(s_t), the value
//! of the state in which response token t is chosen. Walking backwards over a sequence's steps:
//!   δ_t = r_t + γ V_{t+1} - V_t
//!   A_t = δ_t + γλ A_{t+1}
//!   R_t = A_t + V_t                       (the value target)
//! What follows the last step T depends on how the sequence ended:
//! - finished (EOS or a stop string): the episode is over, V_{T+1} = 0 and A_{T+1} = 0;
//! - truncated at the maximum length: the episode would have continued, so we bootstrap. The value
//!   of the state after the last token was never computed (it would need one more forward), so we
//!   use the last value we have: V_{T+1} := V_T. A_{T+1} = 0 in both cases.
//!
//! Tokens outside the mask get A = R = 0.

use anyhow::{bail, Result};

use crate::layout::{check_cu_seqlens, check_len, seq_ranges};
use crate::real::Real;

/// Advantages and returns, both `[N]`.
#[derive(Clone, Debug, PartialEq)]
pub struct GaeOutput<T> {
    pub advantages: Vec<T>,
    pub returns: Vec<T>,
}

/// GAE over packed sequences. `rewards`, `values`, `mask` are `[N]`; `finished[S]` says whether
/// sequence s ended by itself (true) or was cut at the maximum length (false).
pub fn gae<T: Real>(
    rewards: &[T],
    values: &[T],
    mask: &[T],
    cu_seqlens: &[usize],
    finished: &[bool],
    gamma: f64,
    lambda: f64,
) -> Result<GaeOutput<T>> {
    let n = mask.len();
    let what = "GAE";
    check_cu_seqlens(cu_seqlens, n, what)?;
    check_len(rewards, n, "rewards", what)?;
    check_len(values, n, "values", what)?;
    check_len(finished, cu_seqlens.len() - 1, "finished", what)?;
    if !(0.0..=1.0).contains(&gamma) || !(0.0..=1.0).contains(&lambda) {
        bail!("GAE: gamma and lambda must be in [0, 1], got gamma = {gamma}, lambda = {lambda}");
    }
    let (g, gl) = (T::from_f64(gamma), T::from_f64(gamma * lambda));
    let mut advantages = vec![T::zero(); n];
    let mut returns = vec![T::zero(); n];
    for (s, r) in seq_ranges(cu_seqlens).enumerate() {
        let steps: Vec<usize> = r.filter(|&t| mask[t].to_f64() > 0.0).collect();
        let Some(&last) = steps.last() else { continue };
        let mut next_value = if finished[s] { T::zero() } else { values[last] };
        let mut next_adv = T::zero();
        for &t in steps.iter().rev() {
            let delta = rewards[t] + g * next_value - values[t];
            let a = delta + gl * next_adv;
            advantages[t] = a;
            returns[t] = a + values[t];
            next_value = values[t];
            next_adv = a;
        }
    }
    Ok(GaeOutput {
        advantages,
        returns,
    })
}
