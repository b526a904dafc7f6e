//! The SFT step: masked NLL of the response tokens (prompt tokens carry no loss), over
//! micro-batches with gradient accumulation, then clip + AdamW.
//!
//! Nothing in the step waits for the GPU until all of it is queued: ∂loss/∂logp = -w_t does not
//! depend on the log-probs (built on the host from the mask), the token ids are checked on the host,
//! and the clip decision stays on the device. The log-probs come back for the loss metric once,
//! after the optimiser update is queued.

use anyhow::{Context, Result};
use kernels::ops::GradStore;
use kernels::Tensor;
use model::llama::{backward, forward, Keep, LmHead};
use model::{ModelConfig, Params};

use super::common::{
    finish_update, micro_batches, model_batch, queue_update, upload, QueuedUpdate,
};
use crate::batch::{pack, Sequence};
use crate::metrics::Metrics;
use crate::objectives::{sft_grad_logprob, sft_loss, LossAgg, Normaliser};
use crate::optim::AdamW;

#[derive(Clone, Copy, Debug)]
pub struct SftStep {
    pub agg: LossAgg,
    pub micro_batch_tokens: usize,
}

/// A queued micro-batch: its log-probs on the device (read back later, for the metrics) and the
/// host inputs of its loss.
struct Queued {
    logprobs: Tensor,
    mask: Vec<f32>,
    cu_seqlens: Vec<usize>,
}

/// The queued micro-batches of a mini-batch and its normaliser.
struct QueuedBatch {
    parts: Vec<Queued>,
    norm: Normaliser,
}

impl SftStep {
    /// Loss (and gradients accumulated into `grads` when `grads` is given) of a mini-batch.
    pub fn accumulate(
        &self,
        params: &Params,
        cfg: &ModelConfig,
        grads: Option<&mut Params>,
        seqs: &[&Sequence],
    ) -> Result<Metrics> {
        let queued = self.queue(params, cfg, grads, GradStore::Add, seqs)?;
        self.metrics(&queued)
    }

    /// Queues forward, LM head and (with `grads`) backward of every micro-batch without reading
    /// anything back from the device. The first micro-batch stores its gradients as `first`
    /// says (`Overwrite`: `grads` may hold anything, every gradient is written), the others add.
    fn queue(
        &self,
        params: &Params,
        cfg: &ModelConfig,
        mut grads: Option<&mut Params>,
        first: GradStore,
        seqs: &[&Sequence],
    ) -> Result<QueuedBatch> {
        let device = params.embed.device().clone();
        let head = LmHead::new(1.0);
        let whole = pack(seqs)?;
        let norm = Normaliser::count(&whole.loss_mask, &whole.cu_seqlens)?;
        let lens: Vec<usize> = seqs.iter().map(|s| s.tokens.len()).collect();
        let mut parts = vec![];
        let micros = micro_batches(&lens, self.micro_batch_tokens, first, grads.as_deref_mut())?;
        for (store, micro) in micros {
            let part: Vec<&Sequence> = micro.iter().map(|&i| seqs[i]).collect();
            let p = pack(&part)?;
            let batch = model_batch(&p, &device)?;
            let keep = if grads.is_some() {
                Keep::ForBackward
            } else {
                Keep::OutputOnly
            };
            let acts = forward(params, cfg, &batch, keep).context("SFT forward")?;
            let head_out = head.forward(params, &acts.hidden, &p.targets)?;
            if let Some(g) = grads.as_deref_mut() {
                let d_lp = sft_grad_logprob(&p.loss_mask, &p.cu_seqlens, self.agg, &norm)?;
                let d_lp = upload(d_lp, &device)?;
                let (lp, h) = (&head_out, &acts.hidden);
                let d_hidden = head.backward(params, h, &p.targets, lp, &d_lp, None, g, store)?;
                backward(params, cfg, &batch, acts, &d_hidden, g, store).context("SFT backward")?;
            }
            // Only the [N] log-probs outlive the micro-batch (the logits are freed here).
            parts.push(Queued {
                logprobs: head_out.logprobs,
                mask: p.loss_mask,
                cu_seqlens: p.cu_seqlens,
            });
        }
        Ok(QueuedBatch { parts, norm })
    }

    /// Reads the log-probs of the queued micro-batches back (waits for the device) and turns them
    /// into the step's loss metrics.
    fn metrics(&self, q: &QueuedBatch) -> Result<Metrics> {
        let mut metrics = Metrics::new();
        for part in &q.parts {
            let lp = part.logprobs.to_vec_f32()?;
            let out = sft_loss(&lp, &part.mask, &part.cu_seqlens, self.agg, &q.norm)?;
            metrics.merge(&out.metrics);
        }
        Ok(metrics)
    }

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

    /// Queues a whole step (zero the gradients, every micro-batch's forward and backward, clip +
    /// AdamW) without waiting for the device; [`SftStep::finish_step`] reads its metrics.
    pub fn queue_step(
        &self,
        params: &mut Params,
        cfg: &ModelConfig,
        grads: &mut Params,
        opt: &mut AdamW,
        seqs: &[&Sequence],
        lr: f64,
    ) -> Result<PendingSftStep> {
        let q = queue_update(params, grads, opt, lr, |p, g| {
            self.queue(p, cfg, Some(g), GradStore::Overwrite, seqs)
        })?;
        Ok(PendingSftStep(q))
    }

    /// Completes a queued step: the norm and the log-probs come back (the step's one wait for
    /// the device) and become the metrics.
    pub fn finish_step(
        &self,
        params: &mut Params,
        opt: &mut AdamW,
        pending: PendingSftStep,
    ) -> Result<Metrics> {
        finish_update("sft", params, opt, pending.0, |q| self.metrics(q))
    }
}

/// A step [`SftStep::queue_step`] queued and [`SftStep::finish_step`] completes.
#[must_use = "finish the step with SftStep::finish_step"]
pub struct PendingSftStep(QueuedUpdate<QueuedBatch>);
