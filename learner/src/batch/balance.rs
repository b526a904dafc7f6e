//! Token-balanced partition of sequences across N data-parallel ranks.
//!
//! A step waits for the slowest rank and a rank's time grows with its token count, so ranks should
//! get equal tokens, not equal sequence counts. Greedy longest-first (LPT): take sequences from
//! longest to shortest and give each to the rank with the fewest tokens so far (ties: lowest
//! rank, then lowest index, so the result is deterministic). LPT is within 4/3 of the optimal
//! maximum load. Each rank's list is returned in ascending index order.

use anyhow::{bail, Result};

pub fn balance_by_tokens(lens: &[usize], n_ranks: usize) -> Result<Vec<Vec<usize>>> {
    if n_ranks == 0 {
        bail!("the number of data-parallel ranks must be >= 1");
    }
    let mut order: Vec<usize> = (0..lens.len()).collect();
    // Longest first; equal lengths by index so the partition does not depend on the sort.
    order.sort_by(|&a, &b| lens[b].cmp(&lens[a]).then(a.cmp(&b)));
    let mut load = vec![0usize; n_ranks];
    let mut parts: Vec<Vec<usize>> = vec![vec![]; n_ranks];
    for i in order {
        let r = (0..n_ranks)
            .min_by_key(|&r| (load[r], r))
            .expect("n_ranks >= 1");
        load[r] += lens[i];
        parts[r].push(i);
    }
    for p in &mut parts {
        p.sort_unstable();
    }
    Ok(parts)
}

/// Tokens per rank of a partition.
pub fn rank_loads(lens: &[usize], parts: &[Vec<usize>]) -> Vec<usize> {
    parts
        .iter()
        .map(|p| p.iter().map(|&i| lens[i]).sum())
        .collect()
}
