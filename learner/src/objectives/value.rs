//! Critic: clipped value loss (PPO2 / OpenAI baselines).
//!
//! With V the new value, V_old the value at rollout time, R the return and ε_v the clip range:
//!   V_clip = V_old + clip(V - V_old, -ε_v, ε_v)
//!   l_t = ½ · max((V - R)², (V_clip - R)²)
//!   loss = coef · Σ_t w_t l_t
//! ∂l_t/∂V = (V - R) when the unclipped term is the larger (or equal) one. When the clipped term
//! is strictly larger, V lies outside [V_old - ε_v, V_old + ε_v] (inside, V_clip = V), so V_clip is
//! constant in V and the gradient is 0: those are the tokens counted in `critic/vf_clipfrac`.
//! Without a clip range the loss is plain ½ (V - R)².

use anyhow::Result;

use super::aggregation::{check_token_input, token_weights, LossAgg, Normaliser};
use crate::metrics::Metrics;
use crate::real::Real;

/// Settings of the value loss (config names in docs/algorithms.md).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ValueLossConfig {
    /// ε_v; `None` turns clipping off.
    pub clip: Option<f64>,
    /// Multiplies the loss (`vf_coef`).
    pub coef: f64,
    pub agg: LossAgg,
}

impl Default for ValueLossConfig {
    fn default() -> Self {
        ValueLossConfig {
            clip: Some(0.2),
            coef: 1.0,
            agg: LossAgg::TokenMean,
        }
    }
}

/// Per-token inputs of one micro-batch, all `[N]`.
#[derive(Clone, Copy, Debug)]
pub struct ValueBatch<'a, T> {
    pub values: &'a [T],
    pub old_values: &'a [T],
    pub returns: &'a [T],
    pub mask: &'a [T],
    pub cu_seqlens: &'a [usize],
}

#[derive(Clone, Debug)]
pub struct ValueLossOutput<T> {
    pub loss: T,
    /// ∂loss/∂V, `[N]`.
    pub grad_values: Vec<T>,
    /// `critic/vf_loss` (sum), `critic/vf_clipfrac`, `critic/values/mean`, `critic/returns/mean`.
    pub metrics: Metrics,
}

pub fn value_loss<T: Real>(
    b: &ValueBatch<'_, T>,
    cfg: &ValueLossConfig,
    norm: &Normaliser,
) -> Result<ValueLossOutput<T>> {
    let n = b.mask.len();
    let what = "value loss";
    check_token_input(b.values, n, "values", what)?;
    check_token_input(b.old_values, n, "old_values", what)?;
    check_token_input(b.returns, n, "returns", what)?;
    let w = token_weights(b.mask, b.cu_seqlens, cfg.agg, norm)?;
    let coef = T::from_f64(cfg.coef);
    let half = T::from_f64(0.5);
    let mut loss = 0.0f64;
    let (mut clipped, mut toks, mut v_sum, mut r_sum) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    let mut grad_values = vec![T::zero(); n];
    for t in 0..n {
        let (v, r) = (b.values[t], b.returns[t]);
        let e1 = v - r;
        let (l, g, was_clipped) = match cfg.clip {
            None => (half * e1 * e1, e1, false),
            Some(eps) => {
                let eps = T::from_f64(eps);
                let v_old = b.old_values[t];
                let v_clip = v_old + (v - v_old).clamp_to(-eps, eps);
                let e2 = v_clip - r;
                if e2 * e2 > e1 * e1 {
                    (half * e2 * e2, T::zero(), true)
                } else {
                    (half * e1 * e1, e1, false)
                }
            }
        };
        loss += (coef * w[t] * l).to_f64();
        grad_values[t] = coef * w[t] * g;
        let m = b.mask[t].to_f64();
        toks += m;
        v_sum += m * v.to_f64();
        r_sum += m * r.to_f64();
        if was_clipped {
            clipped += m;
        }
    }
    let mut metrics = Metrics::new();
    metrics.sum("critic/vf_loss", loss);
    let mean = |s: f64| if toks > 0.0 { s / toks } else { 0.0 };
    metrics.mean("critic/vf_clipfrac", mean(clipped), toks);
    metrics.mean("critic/values/mean", mean(v_sum), toks);
    metrics.mean("critic/returns/mean", mean(r_sum), toks);
    Ok(ValueLossOutput {
        loss: T::from_f64(loss),
        grad_values,
        metrics,
    })
}
