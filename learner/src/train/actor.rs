//! The PPO / GRPO actor step over one mini-batch: for each micro-batch, forward → LM head
//! (log-prob and entropy of every response token) → policy loss (host, f32) → LM-head backward →
//! decoder backward, accumulating f32 gradients; then clip + AdamW once.
//!
//! The loss of every micro-batch is normalised by the mini-batch's token and sequence counts
//! (plus those of other data-parallel ranks when given), so accumulation equals the full batch.

use anyhow::{Context, Result};
use model::llama::{backward, forward, Keep, LmHead};
use model::{ModelConfig, Params};

use super::common::{model_batch, normaliser_of, optimiser_step, upload, zero_grads};
use crate::batch::{pack, split_by_token_budget, Field, Sequence};
use crate::metrics::Metrics;
use crate::objectives::{policy_loss, Normaliser, PolicyBatch, PolicyLossConfig};
use crate::optim::AdamW;

/// Settings of the actor update.
#[derive(Clone, Copy, Debug)]
pub struct ActorStep {
    pub loss: PolicyLossConfig,
    pub head: LmHead,
    /// Token budget of one micro-batch (`max_tokens_per_micro_batch`).
    pub micro_batch_tokens: usize,
}

impl ActorStep {
    /// Forward and backward of a mini-batch, gradients accumulated into `grads` (not zeroed
    /// here). Sequences must carry `OldLogprob` and `Advantages`, plus `RefLogprob` with a KL loss
    /// and `BehaviourLogprob` with TIS. `norm` = the mini-batch's global counts (`None`: count
    /// these sequences only).
    pub fn accumulate(
        &self,
        params: &Params,
        cfg: &ModelConfig,
        grads: &mut Params,
        seqs: &[&Sequence],
        norm: Option<Normaliser>,
    ) -> Result<Metrics> {
        let device = params.embed.device().clone();
        let norm = match norm {
            Some(n) => n,
            None => normaliser_of(seqs)?,
        };
        let lens: Vec<usize> = seqs.iter().map(|s| s.tokens.len()).collect();
        let mut metrics = Metrics::new();
        for micro in split_by_token_budget(&lens, self.micro_batch_tokens)? {
            let part: Vec<&Sequence> = micro.iter().map(|&i| seqs[i]).collect();
            let p = pack(&part)?;
            let batch = model_batch(&p, &device)?;
            let acts = forward(params, cfg, &batch, Keep::ForBackward).context("actor forward")?;
            let head_out = self.head.forward(params, &acts.hidden, &p.targets)?;
            let logprob = head_out.logprobs.to_vec_f32()?;
            let entropy = head_out.entropy.to_vec_f32()?;
            let out = policy_loss(
                &PolicyBatch {
                    logprob: &logprob,
                    old_logprob: p.field(Field::OldLogprob)?,
                    advantages: p.field(Field::Advantages)?,
                    mask: &p.loss_mask,
                    cu_seqlens: &p.cu_seqlens,
                    entropy: Some(&entropy),
                    ref_logprob: p.fields.get(&Field::RefLogprob).map(|v| v.as_slice()),
                    behaviour_logprob: p.fields.get(&Field::BehaviourLogprob).map(|v| v.as_slice()),
                },
                &self.loss,
                &norm,
            )?;
            metrics.merge(&out.metrics);
            let d_lp = upload(out.grad_logprob, &device)?;
            let d_ent = out.grad_entropy.map(|g| upload(g, &device)).transpose()?;
            let d_hidden = self.head.backward(
                params,
                &acts.hidden,
                &p.targets,
                &head_out,
                &d_lp,
                d_ent.as_ref(),
                grads,
            )?;
            backward(params, cfg, &batch, acts, &d_hidden, grads).context("actor backward")?;
        }
        Ok(metrics)
    }

    /// One optimiser step on a mini-batch: zero grads, accumulate, clip, AdamW at `lr`.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &self,
        params: &mut Params,
        cfg: &ModelConfig,
        grads: &mut Params,
        opt: &mut AdamW,
        seqs: &[&Sequence],
        lr: f64,
    ) -> Result<Metrics> {
        zero_grads(grads)?;
        let mut m = self.accumulate(params, cfg, grads, seqs, None)?;
        optimiser_step("actor", params, grads, opt, lr, &mut m)?;
        Ok(m)
    }
}
