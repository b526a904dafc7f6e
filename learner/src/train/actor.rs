//! The PPO / GRPO actor step over one mini-batch: for each micro-batch, forward → LM head
//! (log-prob and entropy of every response token) → ∂loss/∂logp on the device → LM-head backward
//! → decoder backward, accumulating f32 gradients; then clip + AdamW once.
//!
//! Nothing in the step waits for the GPU until all of it is queued: the gradient of the clipped
//! surrogate w.r.t. the log-probs is computed where they are (`ops::policy_logprob_grad`, the
//! element-wise rule of `objectives::policy`), the parts that do not depend on them (aggregation
//! weights, TIS weights, the entropy bonus's gradient) come from the host. The log-probs and
//! entropies are read back once, after the optimiser update is queued, and the host's
//! [`policy_loss`] turns them into the loss metrics.
//!
//! The loss of every micro-batch is normalised by the mini-batch's token and sequence counts
//! (plus those of other data-parallel ranks when given), so accumulation equals the full batch.

use anyhow::{bail, Context, Result};
use kernels::ops::{policy_logprob_grad, GradStore, KlGrad, PolicyGradInputs, PolicyGradSpec};
use kernels::{Device, Tensor};
use model::llama::{backward, forward, Keep, LmHead};
use model::{ModelConfig, Params};

use super::common::{
    finish_update, micro_batches, model_batch, normaliser_of, queue_update, upload, QueuedUpdate,
};
use crate::batch::{pack, Field, PackedBatch, Sequence};
use crate::metrics::Metrics;
use crate::objectives::{
    policy_loss, token_weights, KlEstimator, Normaliser, PolicyBatch, PolicyLossConfig,
};
use crate::optim::AdamW;
use crate::real::Real;

/// Settings of the actor update.
#[derive(Clone, Copy, Debug)]
pub struct ActorStep {
    pub loss: PolicyLossConfig,
    pub head: LmHead,
    /// Token budget of one micro-batch (`max_tokens_per_micro_batch`).
    pub micro_batch_tokens: usize,
}

/// A queued micro-batch: its log-probs and entropies on the device (read back for the metrics)
/// and its packed host inputs.
struct Queued {
    logprobs: Tensor,
    entropy: Tensor,
    packed: PackedBatch,
}

struct QueuedBatch {
    parts: Vec<Queued>,
    norm: Normaliser,
}

/// A step [`ActorStep::queue_step`] queued and [`ActorStep::finish_step`] completes.
#[must_use = "finish the step with ActorStep::finish_step"]
pub struct PendingActorStep(QueuedUpdate<QueuedBatch>);

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
        let q = self.queue(params, cfg, grads, GradStore::Add, seqs, norm)?;
        self.metrics(&q)
    }

    /// Queues forward, LM head, loss gradient and backward of every micro-batch; reads nothing
    /// back. The first micro-batch stores its gradients as `first` says (`Overwrite`: `grads` may
    /// hold anything, every gradient is written), the others add.
    fn queue(
        &self,
        params: &Params,
        cfg: &ModelConfig,
        grads: &mut Params,
        first: GradStore,
        seqs: &[&Sequence],
        norm: Option<Normaliser>,
    ) -> Result<QueuedBatch> {
        self.loss.validate()?;
        let device = params.embed.device().clone();
        let norm = match norm {
            Some(n) => n,
            None => normaliser_of(seqs)?,
        };
        let lens: Vec<usize> = seqs.iter().map(|s| s.tokens.len()).collect();
        let mut parts = vec![];
        for (store, micro) in
            micro_batches(&lens, self.micro_batch_tokens, first, Some(&mut *grads))?
        {
            let part: Vec<&Sequence> = micro.iter().map(|&i| seqs[i]).collect();
            let p = pack(&part)?;
            let batch = model_batch(&p, &device)?;
            let acts = forward(params, cfg, &batch, Keep::ForBackward).context("actor forward")?;
            let head_out = self.head.forward(params, &acts.hidden, &p.targets)?;
            let (d_lp, d_ent) = self
                .loss_grads(&p, &norm, &head_out.logprobs, &device)
                .context("actor loss gradient")?;
            let d_hidden = self.head.backward(
                params,
                &acts.hidden,
                &p.targets,
                &head_out,
                &d_lp,
                d_ent.as_ref(),
                grads,
                store,
            )?;
            backward(params, cfg, &batch, acts, &d_hidden, grads, store)
                .context("actor backward")?;
            parts.push(Queued {
                logprobs: head_out.logprobs,
                entropy: head_out.entropy,
                packed: p,
            });
        }
        Ok(QueuedBatch { parts, norm })
    }

    /// ∂loss/∂logp (on the device, from the device log-probs) and ∂loss/∂H (host: -w c_ent, it
    /// does not depend on the entropies) of one micro-batch.
    fn loss_grads(
        &self,
        p: &PackedBatch,
        norm: &Normaliser,
        logprob: &Tensor,
        device: &Device,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let cfg = &self.loss;
        let w: Vec<f32> = token_weights(&p.loss_mask, &p.cu_seqlens, cfg.agg, norm)?;
        let old = p.field(Field::OldLogprob)?;
        let adv = p.field(Field::Advantages)?;
        // TIS weight min(exp(clamp(old - behaviour, -20, 20)), cap): a constant per token, in the
        // f32 operations of `policy_loss`.
        let tis = match cfg.tis_cap {
            Some(cap) => {
                let Some(bl) = p.fields.get(&Field::BehaviourLogprob) else {
                    bail!("policy loss: tis_cap is set but no behaviour (rollout) log-probs were given");
                };
                let (bound, cap) = (f32::from_f64(20.0), f32::from_f64(cap));
                let v: Vec<f32> = old
                    .iter()
                    .zip(bl)
                    .map(|(&o, &b)| (o - b).clamp_to(-bound, bound).exp().min_of(cap))
                    .collect();
                Some(upload(v, device)?)
            }
            None => None,
        };
        let reference = match cfg.kl_loss {
            Some(_) => match p.fields.get(&Field::RefLogprob) {
                Some(r) => Some(upload(r.clone(), device)?),
                None => bail!(
                    "policy loss: a KL loss is configured but no reference log-probs were given"
                ),
            },
            None => None,
        };
        let d_ent = (cfg.entropy_coef != 0.0)
            .then(|| {
                let c = f32::from_f64(cfg.entropy_coef);
                upload(w.iter().map(|&wt| -(wt * c)).collect(), device)
            })
            .transpose()?;
        let spec = PolicyGradSpec {
            clip_low: cfg.clip_low,
            clip_high: cfg.clip_high,
            dual_clip: cfg.dual_clip,
            kl: cfg.kl_loss.map(|k| {
                let kind = match k.estimator {
                    KlEstimator::K1 => KlGrad::K1,
                    KlEstimator::K2 => KlGrad::K2,
                    KlEstimator::K3 => KlGrad::K3,
                };
                (k.coef, kind)
            }),
        };
        let (old, adv, w) = (
            upload(old.to_vec(), device)?,
            upload(adv.to_vec(), device)?,
            upload(w, device)?,
        );
        let d_lp = policy_logprob_grad(
            &PolicyGradInputs {
                logprob,
                old_logprob: &old,
                advantages: &adv,
                weight: &w,
                tis_weight: tis.as_ref(),
                ref_logprob: reference.as_ref(),
            },
            &spec,
        )?;
        Ok((d_lp, d_ent))
    }

    /// Reads the queued log-probs and entropies back (waits for the device) and computes the
    /// loss metrics on the host.
    fn metrics(&self, q: &QueuedBatch) -> Result<Metrics> {
        let mut metrics = Metrics::new();
        for part in &q.parts {
            let p = &part.packed;
            let logprob = part.logprobs.to_vec_f32()?;
            let entropy = part.entropy.to_vec_f32()?;
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
                &q.norm,
            )?;
            metrics.merge(&out.metrics);
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
        let pending = self.queue_step(params, cfg, grads, opt, seqs, lr)?;
        self.finish_step(params, opt, pending)
    }

    /// Queues a whole step (zero the gradients, every micro-batch, clip + AdamW) without waiting
    /// for the device; [`ActorStep::finish_step`] reads its metrics.
    #[allow(clippy::too_many_arguments)]
    pub fn queue_step(
        &self,
        params: &mut Params,
        cfg: &ModelConfig,
        grads: &mut Params,
        opt: &mut AdamW,
        seqs: &[&Sequence],
        lr: f64,
    ) -> Result<PendingActorStep> {
        let q = queue_update(params, grads, opt, lr, |p, g| {
            self.queue(p, cfg, g, GradStore::Overwrite, seqs, None)
        })?;
        Ok(PendingActorStep(q))
    }

    /// Completes a queued step: the norm, log-probs and entropies come back (the step's one wait
    /// for the device) and become the metrics.
    pub fn finish_step(
        &self,
        params: &mut Params,
        opt: &mut AdamW,
        pending: PendingActorStep,
    ) -> Result<Metrics> {
        finish_update("actor", params, opt, pending.0, |q| self.metrics(q))
    }
}
