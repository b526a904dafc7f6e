//! Log-probs of the response tokens under a policy, without gradients: the learner's π_old
//! (recomputed before an update), the reference policy's log-probs, and the parity check against
//! the rollout engine. Uses exactly the forward and LM head of training, so that with unchanged
//! weights and the same micro-batches the training step sees ratio = 1 bit for bit.

use anyhow::Result;
use model::llama::{forward, Keep, LmHead};
use model::{ModelConfig, Params};

use super::common::model_batch;
use crate::batch::{pack, split_by_token_budget, Sequence};

/// Per sequence, the log-prob of each response token (length `response_len`).
pub fn response_logprobs(
    params: &Params,
    cfg: &ModelConfig,
    head: &LmHead,
    seqs: &[&Sequence],
    micro_batch_tokens: usize,
) -> Result<Vec<Vec<f32>>> {
    let device = params.embed.device().clone();
    let lens: Vec<usize> = seqs.iter().map(|s| s.tokens.len()).collect();
    let mut out = vec![vec![]; seqs.len()];
    for micro in split_by_token_budget(&lens, micro_batch_tokens)? {
        let part: Vec<&Sequence> = micro.iter().map(|&i| seqs[i]).collect();
        let p = pack(&part)?;
        let acts = forward(params, cfg, &model_batch(&p, &device)?, Keep::OutputOnly)?;
        let lp = head
            .forward(params, &acts.hidden, &p.targets)?
            .logprobs
            .to_vec_f32()?;
        for (k, &i) in micro.iter().enumerate() {
            let s = seqs[i];
            // Response token j is predicted by row prompt_len - 1 + j of its sequence.
            let start = p.cu_seqlens[k] + s.prompt_len - 1;
            out[i] = lp[start..start + s.response_len()].to_vec();
        }
    }
    Ok(out)
}
