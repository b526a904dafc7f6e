//! A whole PPO update on one rollout batch: `ppo_epochs` passes, each shuffled and cut into
//! mini-batches ([`crate::batch::minibatch_schedule`]), one actor (and critic) optimiser step per
//! mini-batch. Returns each step's metrics and their mean (what one RL iteration reports).

use anyhow::Result;
use model::{ModelConfig, Params};

use super::actor::ActorStep;
use super::critic::CriticStep;
use crate::batch::{minibatch_schedule, MiniBatchConfig, Sequence};
use crate::metrics::Metrics;
use crate::optim::AdamW;

/// What one model's update did: per optimiser step, and the mean over steps.
#[derive(Clone, Debug)]
pub struct UpdateMetrics {
    pub per_step: Vec<Metrics>,
    pub mean: Metrics,
}

fn summarise(per_step: Vec<Metrics>) -> UpdateMetrics {
    let mut mean = Metrics::new();
    for m in &per_step {
        for (k, v) in m.values() {
            mean.mean(&k, v, 1.0);
        }
    }
    UpdateMetrics { per_step, mean }
}

/// The model being updated with its optimiser state and gradient buffers.
pub struct Trainee<'a> {
    pub params: &'a mut Params,
    pub cfg: &'a ModelConfig,
    pub grads: &'a mut Params,
    pub opt: &'a mut AdamW,
}

/// Actor update over `seqs` (each with `OldLogprob`, `Advantages`, ...) at learning rate `lr`.
pub fn update_actor(
    step: &ActorStep,
    m: Trainee<'_>,
    seqs: &[Sequence],
    mb: &MiniBatchConfig,
    lr: f64,
) -> Result<UpdateMetrics> {
    let mut per_step = vec![];
    for idx in minibatch_schedule(seqs.len(), mb)? {
        let part: Vec<&Sequence> = idx.iter().map(|&i| &seqs[i]).collect();
        per_step.push(step.step(m.params, m.cfg, m.grads, m.opt, &part, lr)?);
    }
    Ok(summarise(per_step))
}

/// Critic update over `seqs` (each with `Values` = V_old and `Returns`).
pub fn update_critic(
    step: &CriticStep,
    m: Trainee<'_>,
    seqs: &[Sequence],
    mb: &MiniBatchConfig,
    lr: f64,
) -> Result<UpdateMetrics> {
    let mut per_step = vec![];
    for idx in minibatch_schedule(seqs.len(), mb)? {
        let part: Vec<&Sequence> = idx.iter().map(|&i| &seqs[i]).collect();
        per_step.push(step.step(m.params, m.cfg, m.grads, m.opt, &part, lr)?);
    }
    Ok(summarise(per_step))
}
