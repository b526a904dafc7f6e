//! The critic step over one mini-batch: forward → scalar head (a value per row) → clipped value
//! loss against the returns → value-head backward → decoder backward; then clip + AdamW.
//! Row i's value is V(s_i), the state in which response token i+1 is chosen (batch/pack.rs), the
//! same alignment GAE used.

use anyhow::{Context, Result};
use kernels::ops::GradStore;
use model::llama::{backward, forward, values, values_backward, Keep};
use model::{ModelConfig, Params};

use super::common::{micro_batches, model_batch, normaliser_of, optimiser_step, upload};
use crate::batch::{pack, Field, Sequence};
use crate::metrics::Metrics;
use crate::objectives::{value_loss, Normaliser, ValueBatch, ValueLossConfig};
use crate::optim::AdamW;

#[derive(Clone, Copy, Debug)]
pub struct CriticStep {
    pub loss: ValueLossConfig,
    pub micro_batch_tokens: usize,
}

impl CriticStep {
    /// Sequences must carry `Values` (V_old) and `Returns`.
    pub fn accumulate(
        &self,
        params: &Params,
        cfg: &ModelConfig,
        grads: &mut Params,
        seqs: &[&Sequence],
        norm: Option<Normaliser>,
    ) -> Result<Metrics> {
        self.run(params, cfg, grads, GradStore::Add, seqs, norm)
    }

    /// [`CriticStep::accumulate`] with the first micro-batch storing its gradients as `first`
    /// says (`Overwrite`: `grads` may hold anything, every gradient is written), the others add.
    fn run(
        &self,
        params: &Params,
        cfg: &ModelConfig,
        grads: &mut Params,
        first: GradStore,
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
        for (store, micro) in
            micro_batches(&lens, self.micro_batch_tokens, first, Some(&mut *grads))?
        {
            let part: Vec<&Sequence> = micro.iter().map(|&i| seqs[i]).collect();
            let p = pack(&part)?;
            let batch = model_batch(&p, &device)?;
            let acts = forward(params, cfg, &batch, Keep::ForBackward).context("critic forward")?;
            let v = values(params, &acts.hidden)?.to_vec_f32()?;
            let out = value_loss(
                &ValueBatch {
                    values: &v,
                    old_values: p.field(Field::Values)?,
                    returns: p.field(Field::Returns)?,
                    mask: &p.loss_mask,
                    cu_seqlens: &p.cu_seqlens,
                },
                &self.loss,
                &norm,
            )?;
            metrics.merge(&out.metrics);
            let dv = upload(out.grad_values, &device)?;
            let d_hidden = values_backward(params, &acts.hidden, &dv, grads, store)?;
            backward(params, cfg, &batch, acts, &d_hidden, grads, store)
                .context("critic backward")?;
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
        let mut m = self.run(params, cfg, grads, GradStore::Overwrite, seqs, None)?;
        optimiser_step("critic", params, grads, opt, lr, &mut m)?;
        Ok(m)
    }
}
