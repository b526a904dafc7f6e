//! ∂loss/∂logp of the PPO surrogate on the CPU, element by element in f32 in the order of
//! learner/src/objectives/policy.rs (the GPU kernel, cu/policy_grad.cu, follows the same order).

use super::f32s;
use crate::ops::policy_grad::{KlGrad, PolicyGradInputs, PolicyGradScalars};
use crate::{Result, Tensor};

/// min(max(x, lo), hi) with the learner's comparisons (`Real::clamp_to`).
fn clamp(x: f32, lo: f32, hi: f32) -> f32 {
    let y = if x >= lo { x } else { lo };
    if y <= hi {
        y
    } else {
        hi
    }
}

pub fn policy_logprob_grad(x: &PolicyGradInputs, s: &PolicyGradScalars) -> Result<Tensor> {
    const OP: &str = "policy_logprob_grad";
    let (lp, old, adv, w) = (
        f32s(OP, x.logprob)?,
        f32s(OP, x.old_logprob)?,
        f32s(OP, x.advantages)?,
        f32s(OP, x.weight)?,
    );
    let tis = x.tis_weight.map(|t| f32s(OP, t)).transpose()?;
    let reference = x.ref_logprob.map(|t| f32s(OP, t)).transpose()?;
    let bound = 20.0f32;
    let mut grad = vec![0.0f32; lp.len()];
    for t in 0..lp.len() {
        let a = adv[t];
        let r = lp[t] - old[t];
        let rc = clamp(r, -bound, bound);
        let ratio = rc.exp();
        let pg1 = -a * ratio;
        let pg2 = -a * clamp(ratio, s.lo, s.hi);
        let (pg, mut slope) = if pg2 > pg1 {
            (pg2, 0.0)
        } else {
            (pg1, -a * ratio)
        };
        if s.dual_c > 0.0 && a < 0.0 && pg > -a * s.dual_c {
            slope = 0.0;
        }
        if r != rc {
            slope = 0.0;
        }
        if let Some(tis) = tis {
            slope *= tis[t];
        }
        let mut g = w[t] * slope;
        if let (Some((coef, kind)), Some(reference)) = (s.kl, reference) {
            let d = lp[t] - reference[t];
            let k = match kind {
                KlGrad::K1 => 1.0,
                KlGrad::K2 => d,
                KlGrad::K3 => 1.0 - (-d).exp(),
            };
            g += w[t] * coef * k;
        }
        grad[t] = g;
    }
    super::tensor(grad, &[lp.len()])
}
