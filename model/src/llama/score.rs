//! Scoring: per-token log-probs and entropies of whole sequences, without keeping activations.
//! This is what `realign score` prints and what reference-policy inference needs.

use anyhow::{Context, Result};

use super::batch::Batch;
use super::forward::{forward, Keep};
use super::lm_head::LmHead;
use crate::config::ModelConfig;
use crate::params::Params;

/// Next-token statistics of one sequence of L tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct SeqScores {
    /// [L-1]: logprobs[i] = log p(tokens[i+1] | tokens[..=i]).
    pub logprobs: Vec<f32>,
    /// [L-1]: entropy of the distribution logprobs[i] was read from.
    pub entropy: Vec<f32>,
}

/// Scores `seqs` at temperature 1, packing consecutive sequences into forwards of at most
/// `max_batch_tokens` tokens (a longer sequence runs alone).
pub fn score_sequences<S: AsRef<[u32]>>(
    params: &Params,
    cfg: &ModelConfig,
    seqs: &[S],
    max_batch_tokens: usize,
) -> Result<Vec<SeqScores>> {
    let device = params.embed.device().clone();
    let head = LmHead::new(1.0);
    let mut out = Vec::with_capacity(seqs.len());
    let mut start = 0;
    while start < seqs.len() {
        // Greedy packing: take sequences while they fit (always at least one).
        let mut end = start + 1;
        let mut tokens = seqs[start].as_ref().len();
        while end < seqs.len() && tokens + seqs[end].as_ref().len() <= max_batch_tokens {
            tokens += seqs[end].as_ref().len();
            end += 1;
        }
        let group = &seqs[start..end];
        let batch = Batch::from_sequences(group, &device)
            .with_context(|| format!("sequences {start}..{end}"))?;
        let acts = forward(params, cfg, &batch, Keep::OutputOnly)?;
        let res = head.forward(params, &acts.hidden, &batch.next_token_targets())?;
        let (lp, ent) = (res.logprobs.to_vec_f32()?, res.entropy.to_vec_f32()?);
        for r in batch.seq_ranges() {
            // The last position has no next token: drop it from both.
            let keep = r.start..r.end - 1;
            out.push(SeqScores {
                logprobs: lp[keep.clone()].to_vec(),
                entropy: ent[keep].to_vec(),
            });
        }
        start = end;
    }
    Ok(out)
}
