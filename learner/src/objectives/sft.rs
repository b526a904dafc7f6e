//! SFT: masked negative log-likelihood of the response tokens.
//!
//! loss = -Σ_t w_t · logp_t, with w_t from the loss aggregation (token-mean by default, so the
//! loss is the mean NLL per response token). ∂loss/∂logp_t = -w_t; the log-probs come from the
//! kernels' `logsoftmax_gather`, whose backward turns this into ∂loss/∂logits.

use anyhow::Result;

use super::aggregation::{check_token_input, token_weights, LossAgg, Normaliser};
use crate::metrics::Metrics;
use crate::real::Real;

/// Loss, gradient and metrics of one micro-batch.
#[derive(Clone, Debug)]
pub struct SftOutput<T> {
    /// This micro-batch's share of the mini-batch loss (shares add up).
    pub loss: T,
    /// ∂loss/∂logp_t, `[N]`.
    pub grad_logprob: Vec<T>,
    /// `sft/loss` (sum over micro-batches), `sft/tokens`.
    pub metrics: Metrics,
}

/// ∂loss/∂logp_t = -w_t of [`sft_loss`], without the log-probs: the gradient does not depend on
/// them, so a training step can queue the LM-head backward before any log-prob is read back.
pub fn sft_grad_logprob<T: Real>(
    mask: &[T],
    cu_seqlens: &[usize],
    agg: LossAgg,
    norm: &Normaliser,
) -> Result<Vec<T>> {
    Ok(token_weights(mask, cu_seqlens, agg, norm)?
        .into_iter()
        .map(|w| -w)
        .collect())
}

/// Masked NLL of packed sequences. `logprob[N]` are the log-probs of the target tokens,
/// `mask[N]` marks the tokens that count, `cu_seqlens[S+1]` the sequences.
pub fn sft_loss<T: Real>(
    logprob: &[T],
    mask: &[T],
    cu_seqlens: &[usize],
    agg: LossAgg,
    norm: &Normaliser,
) -> Result<SftOutput<T>> {
    let n = mask.len();
    check_token_input(logprob, n, "logprob", "sft loss")?;
    let w = token_weights(mask, cu_seqlens, agg, norm)?;
    let mut loss = 0.0f64;
    let grad_logprob: Vec<T> = w
        .iter()
        .zip(logprob)
        .map(|(&wt, &lp)| {
            loss -= wt.to_f64() * lp.to_f64();
            -wt
        })
        .collect();
    let mut metrics = Metrics::new();
    metrics.sum("sft/loss", loss);
    metrics.sum("sft/tokens", mask.iter().map(|m| m.to_f64()).sum());
    Ok(SftOutput {
        loss: T::from_f64(loss),
        grad_logprob,
        metrics,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gradient_without_logprobs_is_the_loss_gradient() {
        let mask = [0.0f32, 1.0, 1.0, 0.0, 1.0];
        let lp = [-0.5f32, -1.25, -0.75, -2.0, -0.1];
        let cu = [0usize, 3, 5];
        let norm = Normaliser::count(&mask, &cu).unwrap();
        for agg in [LossAgg::TokenMean, LossAgg::SeqMeanTokenMean] {
            let with = sft_loss(&lp, &mask, &cu, agg, &norm).unwrap().grad_logprob;
            let without = sft_grad_logprob(&mask, &cu, agg, &norm).unwrap();
            assert_eq!(with, without, "{agg:?}");
            assert!(without.iter().any(|&g| g != 0.0));
        }
    }
}
