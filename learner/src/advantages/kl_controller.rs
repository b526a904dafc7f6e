//! The KL coefficient β: fixed, or adaptive as in Ziegler et al. 2019 ("Fine-tuning language
//! models from human preferences", §2.2): a proportional controller that steers the measured KL
//! towards a target,
//!   e = clip(KL / KL_target - 1, -0.2, 0.2)
//!   β ← β · (1 + e · n_steps / horizon)
//! where n_steps is the number of samples (or steps, as configured) since the last update.

use anyhow::{bail, Result};

/// Fixed or adaptive β, reported as `kl/coef`.
#[derive(Clone, Debug, PartialEq)]
pub enum KlController {
    Fixed {
        value: f64,
    },
    Adaptive {
        value: f64,
        target: f64,
        horizon: f64,
    },
}

impl KlController {
    pub fn fixed(value: f64) -> Result<KlController> {
        if !(value >= 0.0) {
            bail!("KL controller: kl_coef must be >= 0, got {value}");
        }
        Ok(KlController::Fixed { value })
    }

    pub fn adaptive(init: f64, target: f64, horizon: f64) -> Result<KlController> {
        if !(init >= 0.0) || !(target > 0.0) || !(horizon > 0.0) {
            bail!("KL controller: need kl_coef >= 0, target_kl > 0 and horizon > 0, got {init}, {target}, {horizon}");
        }
        Ok(KlController::Adaptive {
            value: init,
            target,
            horizon,
        })
    }

    /// The current β.
    pub fn value(&self) -> f64 {
        match *self {
            KlController::Fixed { value } | KlController::Adaptive { value, .. } => value,
        }
    }

    /// Feeds the KL measured over the last `n_steps`; the fixed controller ignores it.
    pub fn update(&mut self, current_kl: f64, n_steps: f64) {
        if let KlController::Adaptive {
            value,
            target,
            horizon,
        } = self
        {
            let e = (current_kl / *target - 1.0).clamp(-0.2, 0.2);
            *value *= 1.0 + e * n_steps / *horizon;
        }
    }
}
