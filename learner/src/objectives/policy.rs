//! Policy: PPO clipped surrogate with optional dual clip, entropy bonus, KL-to-reference loss term
//! and truncated importance-sampling (TIS) correction.
//!
//! Per token, with logp the current log-prob (the only input that carries a gradient besides the
//! entropy), logp_old the log-prob of the policy that produced the advantages (recomputed by the
//! learner before the update), A the advantage:
//!   ρ      = exp(clamp(logp - logp_old, -20, 20))
//!   pg1    = -A ρ
//!   pg2    = -A clip(ρ, 1 - ε_low, 1 + ε_high)
//!   pg     = max(pg1, pg2)
//!   dual clip (A < 0 only, c > 1): pg = min(pg, -A c)
//!   TIS:   pg ← pg · min(exp(logp_old - logp_behaviour), cap)    (a constant weight)
//!   l_t    = pg + β_kl · k(logp, logp_ref) - c_ent · H_t
//!   loss   = Σ_t w_t l_t  (w_t from the loss aggregation)
//! Gradient of pg w.r.t. logp: -A ρ on tokens where the unclipped term is active (pg1 ≥ pg2 and
//! the dual clip not active); 0 where a clip is active (the clipped value is constant there:
//! pg2 > pg1 strictly means ρ is outside the clip range). The clamp of the log-ratio at ±20 only
//! guards exp against overflow; beyond it the gradient is 0.
//!
//! TIS: the rollout engine (bf16, different kernels) samples from π_behaviour, which differs a
//! little from the learner's π_old. The per-token weight min(π_old/π_behaviour, cap) (Yao et al.,
//! "Your efficient RL framework secretly brings you off-policy RL training") corrects the
//! surrogate for that mismatch; it carries no gradient.

use anyhow::{bail, Result};

use super::aggregation::{check_token_input, token_weights, LossAgg, Normaliser};
use super::kl::KlEstimator;
use crate::metrics::Metrics;
use crate::real::Real;

/// KL to the reference as a loss term (GRPO style), instead of a penalty in the reward.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KlLoss {
    pub coef: f64,
    pub estimator: KlEstimator,
}

/// Settings of the policy loss (config names in docs/algorithms.md).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PolicyLossConfig {
    /// ε_low: the ratio is clipped below at 1 - ε_low.
    pub clip_low: f64,
    /// ε_high: the ratio is clipped above at 1 + ε_high (DAPO's clip-higher when > ε_low).
    pub clip_high: f64,
    /// Dual-clip constant c (> 1): bounds the loss of negative-advantage tokens by -A c.
    pub dual_clip: Option<f64>,
    /// c_ent: weight of the entropy bonus (0 turns it off).
    pub entropy_coef: f64,
    pub kl_loss: Option<KlLoss>,
    /// TIS cap; `None` turns the correction off.
    pub tis_cap: Option<f64>,
    pub agg: LossAgg,
}

impl Default for PolicyLossConfig {
    fn default() -> Self {
        PolicyLossConfig {
            clip_low: 0.2,
            clip_high: 0.2,
            dual_clip: None,
            entropy_coef: 0.0,
            kl_loss: None,
            tis_cap: None,
            agg: LossAgg::TokenMean,
        }
    }
}

impl PolicyLossConfig {
    /// Errors on settings that make no sense, naming the setting.
    pub fn validate(&self) -> Result<()> {
        if !(self.clip_low >= 0.0 && self.clip_low < 1.0) {
            bail!(
                "policy loss: clip_ratio_low must be in [0, 1), got {}",
                self.clip_low
            );
        }
        if !(self.clip_high >= 0.0) {
            bail!(
                "policy loss: clip_ratio_high must be >= 0, got {}",
                self.clip_high
            );
        }
        if let Some(c) = self.dual_clip {
            if !(c > 1.0) {
                bail!("policy loss: clip_ratio_c (dual clip) must be > 1, got {c}");
            }
        }
        if let Some(cap) = self.tis_cap {
            if !(cap > 0.0) {
                bail!("policy loss: tis_cap must be > 0, got {cap}");
            }
        }
        Ok(())
    }
}

/// Per-token inputs of one micro-batch, all `[N]`.
#[derive(Clone, Copy, Debug)]
pub struct PolicyBatch<'a, T> {
    /// Current log-probs (carry the gradient).
    pub logprob: &'a [T],
    /// Log-probs of the policy before this update (π_old).
    pub old_logprob: &'a [T],
    pub advantages: &'a [T],
    pub mask: &'a [T],
    pub cu_seqlens: &'a [usize],
    /// Per-token entropy of the current policy; needed when `entropy_coef != 0`, reported when given.
    pub entropy: Option<&'a [T]>,
    /// Reference log-probs; needed when `kl_loss` is set.
    pub ref_logprob: Option<&'a [T]>,
    /// Log-probs the rollout engine reported; needed when `tis_cap` is set, reported when given.
    pub behaviour_logprob: Option<&'a [T]>,
}

#[derive(Clone, Debug)]
pub struct PolicyLossOutput<T> {
    pub loss: T,
    /// ∂loss/∂logp, `[N]`.
    pub grad_logprob: Vec<T>,
    /// ∂loss/∂H, `[N]` (the kernels' `logsoftmax_gather_backward` takes it); `None` without bonus.
    pub grad_entropy: Option<Vec<T>>,
    /// actor/pg_loss, actor/entropy_loss, actor/kl_loss (sums); actor/pg_clipfrac,
    /// actor/pg_clipfrac_lower, actor/ppo_kl, actor/ratio_mean, actor/entropy, actor/kl,
    /// actor/tis_weight_mean, rollout/logprob_diff_mean (means); rollout/logprob_diff_max (max).
    pub metrics: Metrics,
}

pub fn policy_loss<T: Real>(
    b: &PolicyBatch<'_, T>,
    cfg: &PolicyLossConfig,
    norm: &Normaliser,
) -> Result<PolicyLossOutput<T>> {
    cfg.validate()?;
    let n = b.mask.len();
    let what = "policy loss";
    check_token_input(b.logprob, n, "logprob", what)?;
    check_token_input(b.old_logprob, n, "old_logprob", what)?;
    check_token_input(b.advantages, n, "advantages", what)?;
    if let Some(e) = b.entropy {
        check_token_input(e, n, "entropy", what)?;
    } else if cfg.entropy_coef != 0.0 {
        bail!(
            "policy loss: entropy_coef is {} but no per-token entropy was given",
            cfg.entropy_coef
        );
    }
    let kl = match (cfg.kl_loss, b.ref_logprob) {
        (Some(kl), Some(r)) => {
            check_token_input(r, n, "ref_logprob", what)?;
            Some((kl, r))
        }
        (Some(_), None) => {
            bail!("policy loss: a KL loss is configured but no reference log-probs were given")
        }
        (None, _) => None,
    };
    if let Some(bl) = b.behaviour_logprob {
        check_token_input(bl, n, "behaviour_logprob", what)?;
    } else if cfg.tis_cap.is_some() {
        bail!("policy loss: tis_cap is set but no behaviour (rollout) log-probs were given");
    }

    let w = token_weights(b.mask, b.cu_seqlens, cfg.agg, norm)?;
    let lo = T::from_f64(1.0 - cfg.clip_low);
    let hi = T::from_f64(1.0 + cfg.clip_high);
    let bound = T::from_f64(20.0);

    let mut grad_logprob = vec![T::zero(); n];
    let mut grad_entropy = (cfg.entropy_coef != 0.0).then(|| vec![T::zero(); n]);
    let (mut pg_loss, mut ent_loss, mut kl_loss) = (0.0f64, 0.0f64, 0.0f64);
    // Masked sums for the mean metrics.
    let mut s = Sums::default();

    for t in 0..n {
        let m = b.mask[t].to_f64();
        let (lp, old, a) = (b.logprob[t], b.old_logprob[t], b.advantages[t]);
        let log_ratio = lp - old;
        let log_ratio_c = log_ratio.clamp_to(-bound, bound);
        let ratio = log_ratio_c.exp();
        let pg1 = -a * ratio;
        let pg2 = -a * ratio.clamp_to(lo, hi);
        // Unclipped branch active on ties: there the two branches agree in value and slope.
        let (mut pg, mut dpg, clipped) = if pg2 > pg1 {
            (pg2, T::zero(), true)
        } else {
            (pg1, -a * ratio, false)
        };
        let mut dual = false;
        if let Some(c) = cfg.dual_clip {
            let pg3 = -a * T::from_f64(c);
            if a < T::zero() && pg > pg3 {
                pg = pg3;
                dpg = T::zero();
                dual = true;
            }
        }
        if log_ratio != log_ratio_c {
            dpg = T::zero();
        }
        if let Some(cap) = cfg.tis_cap {
            let bl = b.behaviour_logprob.expect("checked above")[t];
            let wt = (old - bl)
                .clamp_to(-bound, bound)
                .exp()
                .min_of(T::from_f64(cap));
            pg *= wt;
            dpg *= wt;
            s.tis += m * wt.to_f64();
        }
        pg_loss += (w[t] * pg).to_f64();
        let mut g = w[t] * dpg;

        if let Some((kl, r)) = kl {
            let c = T::from_f64(kl.coef);
            let k = kl.estimator.value(lp, r[t]);
            kl_loss += (w[t] * c * k).to_f64();
            g += w[t] * c * kl.estimator.grad(lp, r[t]);
            s.kl += m * k.to_f64();
        }
        if let Some(e) = b.entropy {
            s.entropy += m * e[t].to_f64();
            if let Some(ge) = grad_entropy.as_mut() {
                let c = T::from_f64(cfg.entropy_coef);
                ent_loss -= (w[t] * c * e[t]).to_f64();
                ge[t] = -(w[t] * c);
            }
        }
        if let Some(bl) = b.behaviour_logprob {
            let d = (old - bl[t]).abs().to_f64();
            if m > 0.0 {
                s.diff_max = s.diff_max.max(d);
            }
            s.diff += m * d;
        }
        grad_logprob[t] = g;
        s.tokens += m;
        s.ratio += m * ratio.to_f64();
        s.ppo_kl += m * (-log_ratio).to_f64();
        if clipped {
            s.clipped += m;
        }
        if dual {
            s.dual += m;
        }
    }

    let loss = pg_loss + kl_loss + ent_loss;
    let mut metrics = Metrics::new();
    metrics.sum("actor/pg_loss", pg_loss);
    let tok = s.tokens;
    let mean = |x: f64| if tok > 0.0 { x / tok } else { 0.0 };
    metrics.mean("actor/pg_clipfrac", mean(s.clipped), tok);
    metrics.mean("actor/ppo_kl", mean(s.ppo_kl), tok);
    metrics.mean("actor/ratio_mean", mean(s.ratio), tok);
    if cfg.dual_clip.is_some() {
        metrics.mean("actor/pg_clipfrac_lower", mean(s.dual), tok);
    }
    if b.entropy.is_some() {
        metrics.mean("actor/entropy", mean(s.entropy), tok);
        metrics.sum("actor/entropy_loss", ent_loss);
    }
    if kl.is_some() {
        metrics.sum("actor/kl_loss", kl_loss);
        metrics.mean("actor/kl", mean(s.kl), tok);
    }
    if cfg.tis_cap.is_some() {
        metrics.mean("actor/tis_weight_mean", mean(s.tis), tok);
    }
    if b.behaviour_logprob.is_some() {
        metrics.mean("rollout/logprob_diff_mean", mean(s.diff), tok);
        if tok > 0.0 {
            metrics.max("rollout/logprob_diff_max", s.diff_max);
        }
    }
    Ok(PolicyLossOutput {
        loss: T::from_f64(loss),
        grad_logprob,
        grad_entropy,
        metrics,
    })
}

#[derive(Default)]
struct Sums {
    tokens: f64,
    clipped: f64,
    dual: f64,
    ratio: f64,
    ppo_kl: f64,
    entropy: f64,
    kl: f64,
    tis: f64,
    diff: f64,
    diff_max: f64,
}
