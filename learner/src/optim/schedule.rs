//! Learning-rate schedules: constant, linear decay, cosine decay, each after an optional linear
//! warmup, never below `min_lr` once warmup is over.
//!
//! Step s counts optimiser steps from 0. Warmup (s < W): lr = peak · (s+1)/W, so the first step
//! already moves the weights (HF's schedulers start at 0 and waste step 0). After warmup, with
//! progress p = clamp((s - W) / (T - W), 0, 1):
//! - constant: lr = peak
//! - linear:   lr = min + (peak - min)(1 - p)
//! - cosine:   lr = min + (peak - min) · ½(1 + cos πp)

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    Constant,
    Linear,
    Cosine,
}

impl ScheduleKind {
    /// Parses the config name (`constant`, `linear`, `cosine`).
    pub fn from_name(name: &str) -> Result<ScheduleKind> {
        Ok(match name {
            "constant" => ScheduleKind::Constant,
            "linear" => ScheduleKind::Linear,
            "cosine" => ScheduleKind::Cosine,
            other => bail!("unknown lr schedule `{other}` (expected constant, linear or cosine)"),
        })
    }
}

/// Settings (config names in docs/algorithms.md).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub kind: ScheduleKind,
    pub peak_lr: f64,
    pub min_lr: f64,
    pub warmup_steps: u64,
    /// Total optimiser steps (the end of the decay); unused by `constant`.
    pub total_steps: u64,
}

impl LrSchedule {
    pub fn constant(lr: f64) -> LrSchedule {
        LrSchedule {
            kind: ScheduleKind::Constant,
            peak_lr: lr,
            min_lr: 0.0,
            warmup_steps: 0,
            total_steps: 0,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.peak_lr >= 0.0 && self.peak_lr.is_finite()) {
            bail!("lr must be finite and >= 0, got {}", self.peak_lr);
        }
        if !(self.min_lr >= 0.0 && self.min_lr <= self.peak_lr) {
            bail!(
                "min_lr must be in [0, lr = {}], got {}",
                self.peak_lr,
                self.min_lr
            );
        }
        if self.kind != ScheduleKind::Constant && self.total_steps < self.warmup_steps {
            bail!(
                "total_steps ({}) must be >= warmup_steps ({}) for a decaying schedule",
                self.total_steps,
                self.warmup_steps
            );
        }
        Ok(())
    }

    /// The learning rate of optimiser step `s` (0-based).
    pub fn lr_at(&self, s: u64) -> f64 {
        let (peak, min) = (self.peak_lr, self.min_lr);
        if s < self.warmup_steps {
            return peak * (s + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps);
        let p = if span == 0 {
            1.0
        } else {
            ((s - self.warmup_steps) as f64 / span as f64).clamp(0.0, 1.0)
        };
        match self.kind {
            ScheduleKind::Constant => peak,
            ScheduleKind::Linear => min + (peak - min) * (1.0 - p),
            ScheduleKind::Cosine => {
                min + (peak - min) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
            }
        }
    }
}
