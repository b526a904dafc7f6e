//! Per-token KL estimators between the current policy π and the reference π_ref, on sampled
//! tokens (Schulman, "Approximating KL divergence"). With δ = logp - logp_ref:
//! - k1 = δ                          ∂k1/∂logp = 1           (unbiased, high variance, can be < 0)
//! - k2 = δ² / 2                     ∂k2/∂logp = δ           (biased, low variance, ≥ 0)
//! - k3 = e^{-δ} - 1 + δ             ∂k3/∂logp = 1 - e^{-δ}  (unbiased, low variance, ≥ 0;
//!   veRL's `low_var_kl`, GRPO's KL term)
//!
//! The gradients are with respect to the current log-prob; the reference is a constant.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::real::Real;

/// Which estimator of KL(π || π_ref) per token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KlEstimator {
    K1,
    K2,
    K3,
}

impl KlEstimator {
    /// Parses the config name (`k1`, `k2`, `k3`; veRL's aliases `kl`, `mse`, `low_var_kl` too).
    pub fn from_name(name: &str) -> Result<KlEstimator> {
        Ok(match name {
            "k1" | "kl" => KlEstimator::K1,
            "k2" | "mse" => KlEstimator::K2,
            "k3" | "low_var_kl" => KlEstimator::K3,
            other => bail!("unknown KL estimator `{other}` (expected k1, k2 or k3)"),
        })
    }

    /// The estimate at one token.
    pub fn value<T: Real>(self, logprob: T, ref_logprob: T) -> T {
        let d = logprob - ref_logprob;
        match self {
            KlEstimator::K1 => d,
            KlEstimator::K2 => T::from_f64(0.5) * d * d,
            KlEstimator::K3 => (-d).exp() - T::one() + d,
        }
    }

    /// ∂(estimate)/∂logprob at one token.
    pub fn grad<T: Real>(self, logprob: T, ref_logprob: T) -> T {
        let d = logprob - ref_logprob;
        match self {
            KlEstimator::K1 => T::one(),
            KlEstimator::K2 => d,
            KlEstimator::K3 => T::one() - (-d).exp(),
        }
    }
}
