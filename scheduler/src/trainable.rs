//! A model being trained by a stage: its weights, f32 gradient buffers, the learner's AdamW (f32
//! master weights and moments) and the learning-rate schedule of its `OptimConfig`.
//!
//! The working weights are the only copy the rest of the run sees: in bf16 on a GPU they are what
//! the rollout engine generates with and what forward/backward read; the optimiser keeps its own
//! f32 master copy and writes the bf16 weights after each step. Schedules count *stage steps*
//! (an RL step may take several optimiser steps over its mini-batches, all at that step's rate).

use std::path::Path;

use anyhow::{Context, Result};
use kernels::DType;
use learner::optim::{AdamW, AdamWConfig, LrSchedule, ScheduleKind};
use learner::train::Trainee;
use model::Params;

use crate::config::OptimConfig;
use crate::models::Model;

pub struct Trainable {
    pub model: Model,
    pub grads: Params,
    pub opt: AdamW,
    pub schedule: LrSchedule,
}

/// The learner's AdamW settings and schedule for `cfg` over a stage of `total_steps` steps.
pub fn optimiser_settings(
    cfg: &OptimConfig,
    total_steps: u64,
) -> Result<(AdamWConfig, LrSchedule)> {
    let schedule = LrSchedule {
        kind: ScheduleKind::from_name(&cfg.schedule)?,
        peak_lr: cfg.lr,
        min_lr: cfg.min_lr,
        warmup_steps: cfg.warmup_steps,
        total_steps,
    };
    schedule.validate()?;
    let adamw = AdamWConfig {
        beta1: cfg.beta1,
        beta2: cfg.beta2,
        eps: cfg.eps,
        weight_decay: cfg.weight_decay,
        max_grad_norm: (cfg.grad_clip > 0.0).then_some(cfg.grad_clip),
    };
    Ok((adamw, schedule))
}

impl Trainable {
    /// Fresh optimiser state for `model`; with `resume`, the state saved by [`Trainable::save`].
    pub fn new(
        model: Model,
        cfg: &OptimConfig,
        total_steps: u64,
        resume: Option<&Path>,
    ) -> Result<Trainable> {
        let (adamw, schedule) = optimiser_settings(cfg, total_steps)?;
        let opt = match resume {
            Some(path) => AdamW::load(path, &model.params)
                .with_context(|| format!("resuming the optimiser from {}", path.display()))?,
            None => AdamW::new(&model.params, adamw)?,
        };
        let grads = model.params.zeros_like(DType::F32)?;
        Ok(Trainable {
            model,
            grads,
            opt,
            schedule,
        })
    }

    /// The learning rate of stage step `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        self.schedule.lr_at(step)
    }

    /// What the learner's update functions take.
    pub fn trainee(&mut self) -> Trainee<'_> {
        Trainee {
            params: &mut self.model.params,
            cfg: &self.model.cfg,
            grads: &mut self.grads,
            opt: &mut self.opt,
        }
    }

    /// Writes the optimiser state (master weights, moments, step) to `path` (one safetensors file).
    pub fn save_optimiser(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        self.opt.save(path)
    }

    /// Writes this model into a checkpoint being staged in `dir`: its HF folder `dir/<folder>` and
    /// its optimiser state `dir/optim/<optim>.safetensors` (where resuming stages look for them).
    pub fn write_checkpoint(
        &self,
        dir: &Path,
        folder: &str,
        optim: &str,
        tokenizer_dir: &Path,
    ) -> Result<()> {
        crate::models::write_into(&self.model, &dir.join(folder), tokenizer_dir)?;
        self.save_optimiser(&dir.join("optim").join(format!("{optim}.safetensors")))
    }
}
