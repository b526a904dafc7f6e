//! The SFT step: masked NLL of the response tokens (prompt tokens carry no loss), over
//! micro-batches with gradient accumulation, then clip + AdamW.

use anyhow::{Context, Result};
use model::llama::{backward, forward, Keep, LmHead};
use model::{ModelConfig, Params};

use super::common::{model_batch, optimiser_step, upload, zero_grads};
use crate::batch::{pack, split_by_token_budget, Sequence};
use crate::metrics::Metrics;
use crate::objectives::{sft_loss, LossAgg, Normaliser};
use crate::optim::AdamW;

#[derive(Clone, Copy, Debug)]
pub struct SftStep {
    pub agg: LossAgg,
    pub micro_batch_tokens: usize,
}

impl SftStep {
    /// Loss (and gradients accumulated into `grads` when `grads` is given) of a mini-batch.
    pub fn accumulate(
        &self,
        params: &Params,
        cfg: &ModelConfig,
        mut grads: Option<&mut Params>,
        seqs: &[&Sequence],
    ) -> Result<Metrics> {
        let device = params.embed.device().clone();
        let head = LmHead::new(1.0);
        let whole = pack(seqs)?;
        let norm = Normaliser::count(&whole.loss_mask, &whole.cu_seqlens)?;
        let lens: Vec<usize> = seqs.iter().map(|s| s.tokens.len()).collect();
        let mut metrics = Metrics::new();
        for micro in split_by_token_budget(&lens, self.micro_batch_tokens)? {
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
            let lp = head_out.logprobs.to_vec_f32()?;
            let out = sft_loss(&lp, &p.loss_mask, &p.cu_seqlens, self.agg, &norm)?;
            metrics.merge(&out.metrics);
            if let Some(g) = grads.as_deref_mut() {
                let d_lp = upload(out.grad_logprob, &device)?;
                let d_hidden =
                    head.backward(params, &acts.hidden, &p.targets, &head_out, &d_lp, None, g)?;
                backward(params, cfg, &batch, acts, &d_hidden, g).context("SFT backward")?;
            }
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
        zero_grads(grads)?;
        let mut m = self.accumulate(params, cfg, Some(grads), seqs)?;
        optimiser_step("sft", params, grads, opt, lr, &mut m)?;
        Ok(m)
    }
}
