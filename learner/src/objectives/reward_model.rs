//! Reward model: Bradley–Terry pairwise loss on (chosen, rejected) scalar scores.
//!
//! With d_i = s_chosen_i - s_rejected_i - margin_i, P the number of pairs in the mini-batch:
//!   loss = (1/P) Σ_i -log σ(d_i) = (1/P) Σ_i softplus(-d_i)
//!   ∂loss/∂s_chosen_i = -(1 - σ(d_i)) / P = -σ(-d_i) / P,   ∂loss/∂s_rejected_i = +σ(-d_i) / P.
//! softplus is evaluated as max(x,0) + ln(1 + e^{-|x|}) so large margins neither overflow nor
//! lose the tail. Accuracy counts pairs with s_chosen > s_rejected (margin not applied).

use anyhow::{bail, Result};

use crate::metrics::Metrics;
use crate::real::Real;

/// Loss, gradients and metrics of one micro-batch of pairs.
#[derive(Clone, Debug)]
pub struct RewardModelOutput<T> {
    pub loss: T,
    pub grad_chosen: Vec<T>,
    pub grad_rejected: Vec<T>,
    /// `rm/loss` (sum), `rm/accuracy`, `rm/margin` (mean s_chosen - s_rejected),
    /// `rm/chosen_mean`, `rm/rejected_mean`.
    pub metrics: Metrics,
}

/// softplus(x) = ln(1 + e^x), stable for any x.
pub fn softplus<T: Real>(x: T) -> T {
    x.max_of(T::zero()) + (T::one() + (-x.abs()).exp()).ln()
}

/// σ(x) = 1 / (1 + e^{-x}), stable for any x.
pub fn sigmoid<T: Real>(x: T) -> T {
    if x >= T::zero() {
        T::one() / (T::one() + (-x).exp())
    } else {
        let e = x.exp();
        e / (T::one() + e)
    }
}

/// Bradley–Terry loss. `margin` (optional, per pair) asks the chosen score to win by that much
/// (Llama-2 style). `total_pairs` is P over the whole mini-batch (micro-batch shares add up).
pub fn bradley_terry_loss<T: Real>(
    chosen: &[T],
    rejected: &[T],
    margin: Option<&[T]>,
    total_pairs: usize,
) -> Result<RewardModelOutput<T>> {
    let p = chosen.len();
    if rejected.len() != p {
        bail!(
            "reward-model loss: {} chosen scores but {} rejected scores",
            p,
            rejected.len()
        );
    }
    if let Some(m) = margin {
        if m.len() != p {
            bail!("reward-model loss: {} pairs but {} margins", p, m.len());
        }
    }
    if total_pairs < p {
        bail!("reward-model loss: total_pairs = {total_pairs} is smaller than this micro-batch ({p} pairs)");
    }
    let mut metrics = Metrics::new();
    if p == 0 {
        metrics.sum("rm/loss", 0.0);
        return Ok(RewardModelOutput {
            loss: T::zero(),
            grad_chosen: vec![],
            grad_rejected: vec![],
            metrics,
        });
    }
    let inv_p = T::from_f64(1.0 / total_pairs as f64);
    let mut loss = 0.0f64;
    let mut correct = 0usize;
    let mut grad_chosen = Vec::with_capacity(p);
    let mut grad_rejected = Vec::with_capacity(p);
    for i in 0..p {
        let m = margin.map_or(T::zero(), |m| m[i]);
        let d = chosen[i] - rejected[i] - m;
        loss += (softplus(-d) * inv_p).to_f64();
        let g = sigmoid(-d) * inv_p;
        grad_chosen.push(-g);
        grad_rejected.push(g);
        if chosen[i] > rejected[i] {
            correct += 1;
        }
    }
    let mean = |xs: &[T]| xs.iter().map(|x| x.to_f64()).sum::<f64>() / p as f64;
    metrics.sum("rm/loss", loss);
    metrics.mean("rm/accuracy", correct as f64 / p as f64, p as f64);
    metrics.mean("rm/margin", mean(chosen) - mean(rejected), p as f64);
    metrics.mean("rm/chosen_mean", mean(chosen), p as f64);
    metrics.mean("rm/rejected_mean", mean(rejected), p as f64);
    Ok(RewardModelOutput {
        loss: T::from_f64(loss),
        grad_chosen,
        grad_rejected,
        metrics,
    })
}
