//! The reward-model step: (chosen, rejected) pairs through the decoder and the scalar head; the
//! score of a sequence is the head's value at its last token (HF's pooled output); Bradley–Terry
//! loss over pairs; the gradient flows back only through those last-token values.

use anyhow::{bail, Context, Result};
use kernels::ops::GradStore;
use model::llama::{backward, forward, values, values_backward, Keep};
use model::{ModelConfig, Params};

use super::common::{micro_batches, model_batch, optimiser_step, upload};
use crate::batch::{pack, split_by_token_budget, Sequence};
use crate::metrics::Metrics;
use crate::objectives::bradley_terry_loss;
use crate::optim::AdamW;

/// One preference pair.
#[derive(Clone, Debug)]
pub struct Pair {
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
}

#[derive(Clone, Copy, Debug)]
pub struct RewardModelStep {
    /// Token budget of one micro-batch; a micro-batch holds whole pairs.
    pub micro_batch_tokens: usize,
}

/// Scores (last-token values) of sequences, without gradients.
pub fn score_sequences(
    params: &Params,
    cfg: &ModelConfig,
    seqs: &[Vec<u32>],
    micro_batch_tokens: usize,
) -> Result<Vec<f32>> {
    let device = params.embed.device().clone();
    let lens: Vec<usize> = seqs.iter().map(|s| s.len()).collect();
    let mut out = vec![0.0; seqs.len()];
    for micro in split_by_token_budget(&lens, micro_batch_tokens)? {
        let part: Vec<Sequence> = micro
            .iter()
            .map(|&i| Sequence::new(seqs[i].clone(), 1))
            .collect();
        let p = pack(&part.iter().collect::<Vec<_>>())?;
        let acts = forward(params, cfg, &model_batch(&p, &device)?, Keep::OutputOnly)?;
        let v = values(params, &acts.hidden)?.to_vec_f32()?;
        for (k, &i) in micro.iter().enumerate() {
            out[i] = v[p.cu_seqlens[k + 1] - 1];
        }
    }
    Ok(out)
}

impl RewardModelStep {
    pub fn accumulate(
        &self,
        params: &Params,
        cfg: &ModelConfig,
        grads: &mut Params,
        pairs: &[Pair],
    ) -> Result<Metrics> {
        self.run(params, cfg, grads, GradStore::Add, pairs)
    }

    /// [`RewardModelStep::accumulate`] with the first micro-batch storing its gradients as
    /// `first` says (`Overwrite`: `grads` may hold anything, every gradient is written), the
    /// others add.
    fn run(
        &self,
        params: &Params,
        cfg: &ModelConfig,
        grads: &mut Params,
        first: GradStore,
        pairs: &[Pair],
    ) -> Result<Metrics> {
        let device = params.embed.device().clone();
        for (i, p) in pairs.iter().enumerate() {
            if p.chosen.is_empty() || p.rejected.is_empty() {
                bail!("preference pair {i} has an empty sequence");
            }
        }
        let lens: Vec<usize> = pairs
            .iter()
            .map(|p| p.chosen.len() + p.rejected.len())
            .collect();
        let mut metrics = Metrics::new();
        for (store, micro) in
            micro_batches(&lens, self.micro_batch_tokens, first, Some(&mut *grads))?
        {
            // Chosen sequences first, then rejected: sequence k and k + P' form pair k.
            let np = micro.len();
            let seqs: Vec<Sequence> = micro
                .iter()
                .map(|&i| Sequence::new(pairs[i].chosen.clone(), 1))
                .chain(
                    micro
                        .iter()
                        .map(|&i| Sequence::new(pairs[i].rejected.clone(), 1)),
                )
                .collect();
            let p = pack(&seqs.iter().collect::<Vec<_>>())?;
            let batch = model_batch(&p, &device)?;
            let acts = forward(params, cfg, &batch, Keep::ForBackward).context("reward forward")?;
            let v = values(params, &acts.hidden)?.to_vec_f32()?;
            let last: Vec<usize> = (0..2 * np).map(|s| p.cu_seqlens[s + 1] - 1).collect();
            let chosen: Vec<f32> = last[..np].iter().map(|&t| v[t]).collect();
            let rejected: Vec<f32> = last[np..].iter().map(|&t| v[t]).collect();
            let out = bradley_terry_loss(&chosen, &rejected, None, pairs.len())?;
            metrics.merge(&out.metrics);
            let mut dv = vec![0.0f32; v.len()];
            for k in 0..np {
                dv[last[k]] = out.grad_chosen[k];
                dv[last[np + k]] = out.grad_rejected[k];
            }
            let dv = upload(dv, &device)?;
            let d_hidden = values_backward(params, &acts.hidden, &dv, grads, store)?;
            backward(params, cfg, &batch, acts, &d_hidden, grads, store)
                .context("reward backward")?;
        }
        Ok(metrics)
    }

    pub fn step(
        &self,
        params: &mut Params,
        cfg: &ModelConfig,
        grads: &mut Params,
        opt: &mut AdamW,
        pairs: &[Pair],
        lr: f64,
    ) -> Result<Metrics> {
        let mut m = self.run(params, cfg, grads, GradStore::Overwrite, pairs)?;
        optimiser_step("rm", params, grads, opt, lr, &mut m)?;
        Ok(m)
    }
}
