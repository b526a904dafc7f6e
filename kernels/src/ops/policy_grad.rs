//! ∂loss/∂logp of the PPO clipped surrogate per token (with dual clip, TIS weight and a KL term to
//! the reference), computed where the log-probs are, so that an actor step needs no device-to-host
//! read of its log-probs before the backward. The loss itself and its metrics stay on the host
//! (learner/src/objectives/policy.rs, which this op mirrors element by element):
//!
//! ```text
//! r = logp - logp_old,  ρ = exp(clamp(r, -20, 20))
//! slope = -A ρ where the unclipped branch is active (pg1 = -A ρ ≥ pg2 = -A clip(ρ, lo, hi)),
//!         0 where a clip is active, the dual clip bounds the loss (A < 0, pg > -A c), or |r| > 20
//! grad  = w · slope · tis  +  (w · kl_coef) · k'(logp - logp_ref)
//! ```
//! w is the token's loss-aggregation weight (0 outside the mask), tis the TIS weight.

use super::{check_dtype, check_shape};
use crate::{DType, Device, Error, Result, Tensor};

/// Which KL estimator's derivative the KL term uses (learner's `KlEstimator`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KlGrad {
    /// k1 = d: k' = 1.
    K1,
    /// k2 = d²/2: k' = d.
    K2,
    /// k3 = e^{-d} - 1 + d: k' = 1 - e^{-d}.
    K3,
}

/// The scalars of the surrogate, as the learner's `PolicyLossConfig` holds them (f64, rounded to
/// f32 here exactly as the host loss rounds them).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PolicyGradSpec {
    pub clip_low: f64,
    pub clip_high: f64,
    /// Dual-clip constant c > 1, or none.
    pub dual_clip: Option<f64>,
    /// The KL-to-reference term: coefficient and estimator.
    pub kl: Option<(f64, KlGrad)>,
}

/// The f32 scalars every backend applies.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PolicyGradScalars {
    pub lo: f32,
    pub hi: f32,
    /// 0 when there is no dual clip.
    pub dual_c: f32,
    pub kl: Option<(f32, KlGrad)>,
}

impl PolicyGradSpec {
    pub fn scalars(&self) -> Result<PolicyGradScalars> {
        let bad = |what: &str| {
            Err(Error::msg(format!(
                "policy_logprob_grad: {what} ({self:?})"
            )))
        };
        if !(self.clip_low >= 0.0 && self.clip_low < 1.0 && self.clip_high >= 0.0) {
            return bad("clip_low must be in [0, 1) and clip_high >= 0");
        }
        if self.dual_clip.is_some_and(|c| c.is_nan() || c <= 1.0) {
            return bad("the dual clip constant must be > 1");
        }
        if self.kl.is_some_and(|(c, _)| !c.is_finite()) {
            return bad("the KL coefficient must be finite");
        }
        Ok(PolicyGradScalars {
            lo: (1.0 - self.clip_low) as f32,
            hi: (1.0 + self.clip_high) as f32,
            dual_c: self.dual_clip.map_or(0.0, |c| c as f32),
            kl: self.kl.map(|(c, k)| (c as f32, k)),
        })
    }
}

/// The per-token inputs, all F32 `[N]` on one device.
pub struct PolicyGradInputs<'a> {
    /// Current log-probs (what the gradient is taken with respect to).
    pub logprob: &'a Tensor,
    pub old_logprob: &'a Tensor,
    pub advantages: &'a Tensor,
    /// The loss-aggregation weight of each token (0 outside the loss mask).
    pub weight: &'a Tensor,
    /// TIS weights min(π_old / π_behaviour, cap), when the correction is on.
    pub tis_weight: Option<&'a Tensor>,
    /// Reference log-probs; required when the spec has a KL term.
    pub ref_logprob: Option<&'a Tensor>,
}

/// ∂loss/∂logp `[N]` F32 of the surrogate described by `spec` (see the module comment).
pub fn policy_logprob_grad(x: &PolicyGradInputs, spec: &PolicyGradSpec) -> Result<Tensor> {
    const OP: &str = "policy_logprob_grad";
    let n = x.logprob.numel();
    let s = spec.scalars()?;
    if s.kl.is_some() && x.ref_logprob.is_none() {
        return Err(Error::msg(format!(
            "{OP}: a KL term is configured but no reference log-probs were given"
        )));
    }
    let named = [
        ("logprob", Some(x.logprob)),
        ("old_logprob", Some(x.old_logprob)),
        ("advantages", Some(x.advantages)),
        ("weight", Some(x.weight)),
        ("tis_weight", x.tis_weight),
        ("ref_logprob", x.ref_logprob),
    ];
    for (name, t) in named {
        if let Some(t) = t {
            check_dtype(OP, t, DType::F32)?;
            check_shape(OP, name, t, &[n])?;
            x.logprob.check_same_device(t, OP)?;
        }
    }
    match x.logprob.device() {
        Device::Cpu => crate::cpu::policy_grad::policy_logprob_grad(x, &s),
        Device::Cuda(_) => crate::cuda::policy_grad::policy_logprob_grad(x, &s),
    }
}
