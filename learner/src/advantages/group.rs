//! Outcome advantages computed from one scalar score per sequence within groups of samples of the
//! same prompt: GRPO (group-normalised) and RLOO (leave-one-out). `groups[S]` gives each
//! sequence's group id (any ids; members need not be adjacent). The per-sequence advantage is
//! broadcast to the sequence's masked tokens with [`broadcast_to_tokens`].

use std::collections::BTreeMap;

use anyhow::{bail, Result};

use crate::layout::{check_cu_seqlens, check_len, seq_ranges};
use crate::real::Real;

fn members(groups: &[usize]) -> BTreeMap<usize, Vec<usize>> {
    let mut m: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, &g) in groups.iter().enumerate() {
        m.entry(g).or_default().push(i);
    }
    m
}

/// GRPO (Shao et al. 2024): A_i = (s_i - mean_g) / (std_g + ε) with `norm_by_std`, else
/// A_i = s_i - mean_g (Dr.GRPO drops the std). std_g is the unbiased (n-1) standard deviation, as
/// `torch.std`. A group of one has no peers: like veRL we take mean 0 and std 1 there, so its
/// advantage is its score.
pub fn grpo_advantages<T: Real>(
    scores: &[T],
    groups: &[usize],
    norm_by_std: bool,
    epsilon: f64,
) -> Result<Vec<T>> {
    check_len(groups, scores.len(), "groups", "GRPO advantages")?;
    let mut adv = vec![T::zero(); scores.len()];
    for idx in members(groups).values() {
        let k = idx.len() as f64;
        let (mean, std) = if idx.len() == 1 {
            (0.0, 1.0)
        } else {
            let mean = idx.iter().map(|&i| scores[i].to_f64()).sum::<f64>() / k;
            let var = idx
                .iter()
                .map(|&i| (scores[i].to_f64() - mean).powi(2))
                .sum::<f64>()
                / (k - 1.0);
            (mean, var.sqrt())
        };
        for &i in idx {
            let centred = scores[i].to_f64() - mean;
            adv[i] = T::from_f64(if norm_by_std {
                centred / (std + epsilon)
            } else {
                centred
            });
        }
    }
    Ok(adv)
}

/// RLOO (Ahmadian et al. 2024): A_i = s_i - (1/(k-1)) Σ_{j≠i} s_j, the baseline being the mean
/// score of the other samples of the prompt (unbiased). Needs at least 2 samples per group.
pub fn rloo_advantages<T: Real>(scores: &[T], groups: &[usize]) -> Result<Vec<T>> {
    check_len(groups, scores.len(), "groups", "RLOO advantages")?;
    let mut adv = vec![T::zero(); scores.len()];
    for (g, idx) in members(groups) {
        if idx.len() < 2 {
            bail!("RLOO advantages: group {g} has {} sample(s); RLOO needs at least 2 samples per prompt (n_samples_per_prompt >= 2)", idx.len());
        }
        let sum: f64 = idx.iter().map(|&i| scores[i].to_f64()).sum();
        let k = idx.len() as f64;
        for &i in &idx {
            let s = scores[i].to_f64();
            adv[i] = T::from_f64(s - (sum - s) / (k - 1.0));
        }
    }
    Ok(adv)
}

/// s_i - mean of its group (REINFORCE++-baseline's per-prompt baseline).
pub fn subtract_group_mean<T: Real>(scores: &[T], groups: &[usize]) -> Result<Vec<T>> {
    check_len(groups, scores.len(), "groups", "group baseline")?;
    let mut out = vec![T::zero(); scores.len()];
    for idx in members(groups).values() {
        let mean = idx.iter().map(|&i| scores[i].to_f64()).sum::<f64>() / idx.len() as f64;
        for &i in idx {
            out[i] = T::from_f64(scores[i].to_f64() - mean);
        }
    }
    Ok(out)
}

/// Writes each sequence's value on its masked tokens (0 elsewhere): `[S]` -> `[N]`.
pub fn broadcast_to_tokens<T: Real>(
    per_seq: &[T],
    mask: &[T],
    cu_seqlens: &[usize],
) -> Result<Vec<T>> {
    check_cu_seqlens(cu_seqlens, mask.len(), "broadcast to tokens")?;
    check_len(
        per_seq,
        cu_seqlens.len() - 1,
        "per-sequence values",
        "broadcast to tokens",
    )?;
    let mut out = vec![T::zero(); mask.len()];
    for (s, r) in seq_ranges(cu_seqlens).enumerate() {
        for t in r {
            out[t] = per_seq[s] * mask[t];
        }
    }
    Ok(out)
}
