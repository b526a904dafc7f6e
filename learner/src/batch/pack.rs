//! Packing variable-length sequences back to back, without padding.
//!
//! A packed batch of S sequences has N = Σ len_s token slots. Rows are what the model computes
//! per slot: row i holds the token `tokens[i]`, its position inside its own sequence, and the
//! *prediction of the next token*: `targets[i] = tokens[i+1]` when i+1 is in the same sequence,
//! else NO_TARGET (the kernels' `u32::MAX`). Every per-token training quantity (log-probs,
//! advantages, values, the loss mask) is aligned with the rows that predict the token, so that
//! row i's value is V(s_i), the value of the state in which token i+1 is chosen, and row i's
//! log-prob is log π(tokens[i+1] | tokens[..=i]). The loss mask is 1 on rows whose target is a
//! response token.

use std::collections::BTreeMap;

use anyhow::{bail, Result};

/// "No target" in `targets` (matches the kernels' logsoftmax_gather convention).
pub const NO_TARGET: u32 = u32::MAX;

/// Per-response-token quantities a sequence may carry into training.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Field {
    /// log π_old of the response tokens (recomputed by the learner before the update).
    OldLogprob,
    /// log π_ref.
    RefLogprob,
    /// log π_behaviour as reported by the rollout engine.
    BehaviourLogprob,
    Advantages,
    Returns,
    /// Critic values at rollout time (V_old of the clipped value loss).
    Values,
}

/// One sequence: prompt followed by response, plus per-response-token fields
/// (each of length `tokens.len() - prompt_len`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sequence {
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    pub fields: BTreeMap<Field, Vec<f32>>,
}

impl Sequence {
    pub fn new(tokens: Vec<u32>, prompt_len: usize) -> Sequence {
        Sequence {
            tokens,
            prompt_len,
            fields: BTreeMap::new(),
        }
    }

    pub fn with(mut self, field: Field, values: Vec<f32>) -> Sequence {
        self.fields.insert(field, values);
        self
    }

    pub fn response_len(&self) -> usize {
        self.tokens.len().saturating_sub(self.prompt_len)
    }
}

/// Sequences packed back to back. All per-row arrays are `[N]`.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedBatch {
    pub tokens: Vec<u32>,
    /// Position of each token inside its own sequence (0-based), for RoPE.
    pub positions: Vec<u32>,
    /// Next token of the same sequence, or [`NO_TARGET`].
    pub targets: Vec<u32>,
    /// 1.0 on rows whose target is a response token.
    pub loss_mask: Vec<f32>,
    /// `[S+1]` offsets.
    pub cu_seqlens: Vec<usize>,
    /// Per-row fields (0 on rows outside the loss mask).
    pub fields: BTreeMap<Field, Vec<f32>>,
}

impl PackedBatch {
    pub fn num_tokens(&self) -> usize {
        self.tokens.len()
    }

    pub fn num_seqs(&self) -> usize {
        self.cu_seqlens.len() - 1
    }

    /// `cu_seqlens` as u32 for the kernels.
    pub fn cu_seqlens_u32(&self) -> Vec<u32> {
        self.cu_seqlens.iter().map(|&c| c as u32).collect()
    }

    /// A per-row field, or an error naming it.
    pub fn field(&self, f: Field) -> Result<&[f32]> {
        match self.fields.get(&f) {
            Some(v) => Ok(v),
            None => bail!("the packed batch has no {f:?} field (the rollout did not provide it)"),
        }
    }
}

/// Packs `seqs` (in the given order). Every sequence needs at least one token and a prompt of at
/// least one token (the first token is never predicted); all sequences must carry the same fields.
pub fn pack(seqs: &[&Sequence]) -> Result<PackedBatch> {
    let n: usize = seqs.iter().map(|s| s.tokens.len()).sum();
    let mut b = PackedBatch {
        tokens: Vec::with_capacity(n),
        positions: Vec::with_capacity(n),
        targets: Vec::with_capacity(n),
        loss_mask: Vec::with_capacity(n),
        cu_seqlens: vec![0],
        fields: BTreeMap::new(),
    };
    let keys: Vec<Field> = seqs
        .first()
        .map_or(vec![], |s| s.fields.keys().copied().collect());
    for k in &keys {
        b.fields.insert(*k, Vec::with_capacity(n));
    }
    for (i, s) in seqs.iter().enumerate() {
        let len = s.tokens.len();
        if s.prompt_len == 0 || s.prompt_len > len {
            bail!(
                "sequence {i}: prompt_len {} must be between 1 and the sequence length {len}",
                s.prompt_len
            );
        }
        let their: Vec<Field> = s.fields.keys().copied().collect();
        if their != keys {
            bail!("sequence {i} carries fields {their:?} but sequence 0 carries {keys:?}");
        }
        let resp = s.response_len();
        for t in 0..len {
            b.tokens.push(s.tokens[t]);
            b.positions.push(t as u32);
            let predicts_response = t + 1 < len && t + 1 >= s.prompt_len;
            b.targets.push(if t + 1 < len {
                s.tokens[t + 1]
            } else {
                NO_TARGET
            });
            b.loss_mask.push(if predicts_response { 1.0 } else { 0.0 });
        }
        for (k, v) in &s.fields {
            if v.len() != resp {
                bail!(
                    "sequence {i}: field {k:?} has {} values but the response has {resp} tokens",
                    v.len()
                );
            }
            let dst = b.fields.get_mut(k).expect("same keys checked above");
            // Row t predicts token t+1; response token j is token prompt_len + j, predicted by
            // row prompt_len - 1 + j. The last row predicts nothing.
            dst.extend(std::iter::repeat_n(0.0, s.prompt_len - 1));
            dst.extend_from_slice(v);
            dst.push(0.0);
        }
        b.cu_seqlens.push(b.tokens.len());
    }
    Ok(b)
}
