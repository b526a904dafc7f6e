//! AdamW over a model's `Params` (f32 moments, optional f32 master weights when the working copy
//! is bf16), with global gradient-norm clipping and the learning-rate schedule of `OptimConfig`.
//! Its whole state (moments, master weights, step) goes into checkpoints so a resumed run takes
//! bit-identical steps.

use std::path::Path;

use anyhow::{bail, Context, Result};
use kernels::ops::{adamw_step, scale_inplace, sum_squares, AdamWParams};
use kernels::DType;
use model::{ModelConfig, Params};
use serde::{Deserialize, Serialize};

use crate::config::OptimConfig;

pub struct AdamW {
    pub cfg: OptimConfig,
    /// Optimiser steps taken (the next step is `step + 1`).
    pub step: u64,
    /// Steps this optimiser will take in its stage (for the linear / cosine schedules).
    pub total_steps: u64,
    m: Params,
    v: Params,
    /// f32 copy of bf16 weights; `None` when the weights are f32 (they are the master).
    master: Option<Params>,
}

/// What a step did, for `actor/grad_norm` and `actor/lr`.
#[derive(Clone, Copy, Debug)]
pub struct StepInfo {
    pub grad_norm: f64,
    pub lr: f64,
}

#[derive(Serialize, Deserialize)]
struct OptimMeta {
    step: u64,
    has_master: bool,
}

impl AdamW {
    pub fn new(cfg: &OptimConfig, params: &Params, total_steps: u64) -> Result<AdamW> {
        if !matches!(cfg.schedule.as_str(), "constant" | "linear" | "cosine") {
            bail!(
                "optimiser schedule `{}`: expected constant, linear or cosine",
                cfg.schedule
            );
        }
        let master = match params.embed.dtype() {
            DType::F32 => None,
            _ => Some(params.cast(DType::F32)?),
        };
        Ok(AdamW {
            cfg: cfg.clone(),
            step: 0,
            total_steps,
            m: params.zeros_like(DType::F32)?,
            v: params.zeros_like(DType::F32)?,
            master,
        })
    }

    /// The learning rate of step `step` (1-based): linear warmup, then constant, linear decay or
    /// cosine decay to `min_lr` at `total_steps`.
    pub fn lr_at(&self, step: u64) -> f64 {
        let c = &self.cfg;
        if c.warmup_steps > 0 && step <= c.warmup_steps {
            return c.lr * step as f64 / c.warmup_steps as f64;
        }
        let span = self.total_steps.saturating_sub(c.warmup_steps).max(1) as f64;
        let t = ((step - c.warmup_steps.min(step)) as f64 / span).min(1.0);
        match c.schedule.as_str() {
            "linear" => c.min_lr + (c.lr - c.min_lr) * (1.0 - t),
            "cosine" => {
                c.min_lr + (c.lr - c.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
            _ => c.lr,
        }
    }

    /// Clips `grads` to the global norm `grad_clip` and applies one AdamW step to `params`.
    pub fn step(&mut self, params: &mut Params, grads: &mut Params) -> Result<StepInfo> {
        let mut sq = 0.0;
        for (_, g) in grads.tensors() {
            sq += sum_squares(g)?;
        }
        let grad_norm = sq.sqrt();
        if !grad_norm.is_finite() {
            bail!("the gradient norm is {grad_norm}; the loss diverged (lower the learning rate)");
        }
        if self.cfg.grad_clip > 0.0 && grad_norm > self.cfg.grad_clip {
            let s = (self.cfg.grad_clip / (grad_norm + 1e-6)) as f32;
            for (_, g) in grads.tensors_mut() {
                scale_inplace(g, s)?;
            }
        }
        self.step += 1;
        let lr = self.lr_at(self.step);
        let hp = AdamWParams {
            lr,
            beta1: self.cfg.beta1,
            beta2: self.cfg.beta2,
            eps: self.cfg.eps,
            weight_decay: self.cfg.weight_decay,
            step: self.step,
        };
        let gs = grads.tensors();
        let ms = self.m.tensors_mut();
        let vs = self.v.tensors_mut();
        match &mut self.master {
            None => {
                for ((((name, p), (_, g)), (_, m)), (_, v)) in
                    params.tensors_mut().into_iter().zip(gs).zip(ms).zip(vs)
                {
                    adamw_step(p, g, m, v, &hp, None)
                        .with_context(|| format!("AdamW on {name}"))?;
                }
            }
            Some(master) => {
                for (((((name, p), (_, w)), (_, g)), (_, m)), (_, v)) in master
                    .tensors_mut()
                    .into_iter()
                    .zip(params.tensors_mut())
                    .zip(gs)
                    .zip(ms)
                    .zip(vs)
                {
                    adamw_step(p, g, m, v, &hp, Some(w))
                        .with_context(|| format!("AdamW on {name}"))?;
                }
            }
        }
        Ok(StepInfo { grad_norm, lr })
    }

    /// Writes the moments (and master weights) as HF-layout folders plus `optim.json`.
    pub fn save(&self, dir: &Path, cfg: &ModelConfig) -> Result<()> {
        model::io::save_model(&dir.join("exp_avg"), cfg, &self.m)?;
        model::io::save_model(&dir.join("exp_avg_sq"), cfg, &self.v)?;
        if let Some(master) = &self.master {
            model::io::save_model(&dir.join("master"), cfg, master)?;
        }
        let meta = OptimMeta {
            step: self.step,
            has_master: self.master.is_some(),
        };
        crate::atomic::write_file(&dir.join("optim.json"), &serde_json::to_vec_pretty(&meta)?)
    }

    /// Restores what [`AdamW::save`] wrote.
    pub fn load(&mut self, dir: &Path, cfg: &ModelConfig) -> Result<()> {
        let text = std::fs::read_to_string(dir.join("optim.json"))
            .with_context(|| format!("cannot read {}", dir.join("optim.json").display()))?;
        let meta: OptimMeta = serde_json::from_str(&text)?;
        let dev = self.m.embed.device().clone();
        self.m = model::io::load_params(&dir.join("exp_avg"), cfg, &dev, DType::F32)?;
        self.v = model::io::load_params(&dir.join("exp_avg_sq"), cfg, &dev, DType::F32)?;
        if meta.has_master {
            self.master = Some(model::io::load_params(
                &dir.join("master"),
                cfg,
                &dev,
                DType::F32,
            )?);
        }
        self.step = meta.step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opt(schedule: &str, warmup: u64) -> OptimConfig {
        OptimConfig {
            lr: 1.0,
            min_lr: 0.0,
            schedule: schedule.into(),
            warmup_steps: warmup,
            ..Default::default()
        }
    }

    #[test]
    fn schedules_warm_up_and_decay() {
        let cfg = ModelConfig::new(model::Arch::Llama, 8, 16, 1, 2, 2, 10);
        let p = Params::init(&cfg, 0, &kernels::Device::Cpu, DType::F32).unwrap();
        let a = AdamW::new(&opt("linear", 2), &p, 10).unwrap();
        assert_eq!(a.lr_at(1), 0.5);
        assert_eq!(a.lr_at(2), 1.0);
        assert!((a.lr_at(6) - 0.5).abs() < 1e-12);
        assert_eq!(a.lr_at(10), 0.0);
        let c = AdamW::new(&opt("cosine", 0), &p, 10).unwrap();
        assert!((c.lr_at(5) - 0.5).abs() < 1e-12);
        let k = AdamW::new(&opt("constant", 0), &p, 10).unwrap();
        assert_eq!(k.lr_at(7), 1.0);
    }
}
