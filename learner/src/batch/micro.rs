//! Micro-batches under a token budget, for gradient accumulation.
//!
//! The budget bounds the activation memory of one forward/backward. Sequences are taken in order
//! and a micro-batch is closed when the next sequence would overflow the budget (first-fit in
//! order keeps the split deterministic and the packing of a sequence contiguous). The loss of
//! every micro-batch is normalised by the counts of the whole mini-batch
//! ([`crate::objectives::Normaliser`]), so accumulated gradients equal the full-batch gradient.

use anyhow::{bail, Result};

/// Groups of sequence indices (into `lens`), each with at most `max_tokens` tokens.
pub fn split_by_token_budget(lens: &[usize], max_tokens: usize) -> Result<Vec<Vec<usize>>> {
    if max_tokens == 0 {
        bail!("the micro-batch token budget must be > 0");
    }
    let mut out: Vec<Vec<usize>> = vec![];
    let mut cur: Vec<usize> = vec![];
    let mut cur_tokens = 0usize;
    for (i, &l) in lens.iter().enumerate() {
        if l > max_tokens {
            bail!(
                "sequence {i} has {l} tokens, more than the micro-batch token budget \
                 ({max_tokens}); raise max_tokens_per_micro_batch"
            );
        }
        if cur_tokens + l > max_tokens && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
            cur_tokens = 0;
        }
        cur.push(i);
        cur_tokens += l;
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    Ok(out)
}
