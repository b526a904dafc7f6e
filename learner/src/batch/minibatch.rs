//! PPO mini-batches: `epochs` passes over the rollout batch, each pass shuffled with a seeded RNG
//! and cut into `num_mini_batches` near-equal mini-batches (one optimiser step each).
//!
//! Seeding: pass e shuffles with StdRng::seed_from_u64(seed + e), so a run is reproducible and
//! each pass sees a different order. Without shuffling the passes repeat the batch order.

use anyhow::{bail, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// Settings (config names in docs/algorithms.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MiniBatchConfig {
    pub num_mini_batches: usize,
    /// Passes over the batch (`ppo_epochs`).
    pub epochs: usize,
    pub shuffle: bool,
    pub seed: u64,
}

/// The mini-batches in training order: `epochs · num_mini_batches` lists of sequence indices.
/// Sizes differ by at most one when `n_seqs` is not a multiple of `num_mini_batches`.
pub fn minibatch_schedule(n_seqs: usize, cfg: &MiniBatchConfig) -> Result<Vec<Vec<usize>>> {
    if cfg.num_mini_batches == 0 || cfg.epochs == 0 {
        bail!(
            "num_mini_batches ({}) and ppo_epochs ({}) must both be >= 1",
            cfg.num_mini_batches,
            cfg.epochs
        );
    }
    if cfg.num_mini_batches > n_seqs {
        bail!(
            "num_mini_batches ({}) is larger than the number of sequences in the batch ({n_seqs})",
            cfg.num_mini_batches
        );
    }
    let mut out = Vec::with_capacity(cfg.epochs * cfg.num_mini_batches);
    for e in 0..cfg.epochs {
        let mut order: Vec<usize> = (0..n_seqs).collect();
        if cfg.shuffle {
            let mut rng = StdRng::seed_from_u64(cfg.seed.wrapping_add(e as u64));
            order.shuffle(&mut rng);
        }
        let (q, r) = (n_seqs / cfg.num_mini_batches, n_seqs % cfg.num_mini_batches);
        let mut start = 0;
        for k in 0..cfg.num_mini_batches {
            let size = q + usize::from(k < r);
            out.push(order[start..start + size].to_vec());
            start += size;
        }
    }
    Ok(out)
}
