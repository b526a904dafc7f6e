//! A packed batch: S sequences laid back to back as N tokens, the way every op in kernels/ sees them.
//!
//! `cu_seqlens[s]..cu_seqlens[s+1]` are the rows of sequence s; attention is causal inside each of
//! those ranges and never crosses them. Positions restart at 0 for each sequence unless the caller
//! gives its own (e.g. a continuation whose prefix lives in a KV cache).

use anyhow::{bail, Result};
use kernels::{Device, Tensor};

/// Marks "no next token" in a targets vector (the last position of each sequence): the log-prob
/// there is 0 and it contributes nothing to the backward (kernels' `logsoftmax_gather` contract).
pub const NO_TARGET: u32 = u32::MAX;

/// Token ids, sequence offsets and positions, on the host (for checks and targets) and on the
/// device (for the ops).
pub struct Batch {
    /// [N] u32
    pub tokens: Tensor,
    /// [S+1] u32
    pub cu_seqlens: Tensor,
    /// [N] u32
    pub positions: Tensor,
    host_tokens: Vec<u32>,
    host_cu_seqlens: Vec<u32>,
}

impl Batch {
    /// Packs `seqs` back to back with positions 0..len for each. Empty sequences are refused.
    pub fn from_sequences<S: AsRef<[u32]>>(seqs: &[S], device: &Device) -> Result<Batch> {
        let mut tokens = Vec::new();
        let mut cu = vec![0u32];
        let mut positions = Vec::new();
        for (s, seq) in seqs.iter().enumerate() {
            let seq = seq.as_ref();
            if seq.is_empty() {
                bail!("sequence {s} of the batch is empty");
            }
            tokens.extend_from_slice(seq);
            positions.extend(0..seq.len() as u32);
            cu.push(tokens.len() as u32);
        }
        Batch::new(tokens, cu, positions, device)
    }

    /// A batch from already-packed host vectors; checks that they agree with each other.
    pub fn new(
        tokens: Vec<u32>,
        cu_seqlens: Vec<u32>,
        positions: Vec<u32>,
        device: &Device,
    ) -> Result<Batch> {
        let n = tokens.len();
        if n == 0 {
            bail!("the batch has no tokens");
        }
        if positions.len() != n {
            bail!("{} positions for {n} tokens", positions.len());
        }
        if cu_seqlens.first() != Some(&0) || cu_seqlens.last() != Some(&(n as u32)) {
            bail!("cu_seqlens must start at 0 and end at the token count {n}, got {cu_seqlens:?}");
        }
        if cu_seqlens.windows(2).any(|w| w[1] <= w[0]) {
            bail!(
                "cu_seqlens must be strictly increasing (no empty sequences), got {cu_seqlens:?}"
            );
        }
        let s = cu_seqlens.len() - 1;
        Ok(Batch {
            tokens: Tensor::from_u32(tokens.clone(), &[n], device)?,
            cu_seqlens: Tensor::from_u32(cu_seqlens.clone(), &[s + 1], device)?,
            positions: Tensor::from_u32(positions, &[n], device)?,
            host_tokens: tokens,
            host_cu_seqlens: cu_seqlens,
        })
    }

    /// N
    pub fn num_tokens(&self) -> usize {
        self.host_tokens.len()
    }

    /// S
    pub fn num_seqs(&self) -> usize {
        self.host_cu_seqlens.len() - 1
    }

    pub fn host_tokens(&self) -> &[u32] {
        &self.host_tokens
    }

    pub fn host_cu_seqlens(&self) -> &[u32] {
        &self.host_cu_seqlens
    }

    /// The token rows of each sequence.
    pub fn seq_ranges(&self) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
        self.host_cu_seqlens
            .windows(2)
            .map(|w| w[0] as usize..w[1] as usize)
    }

    /// targets[i] = tokens[i+1] inside a sequence, [`NO_TARGET`] at each sequence's last token.
    pub fn next_token_targets(&self) -> Vec<u32> {
        let mut t = vec![NO_TARGET; self.num_tokens()];
        for r in self.seq_ranges() {
            // Each position's target is the following token of the same sequence.
            t[r.start..r.end - 1].copy_from_slice(&self.host_tokens[r.start + 1..r.end]);
        }
        t
    }

    /// Errors naming the first token id that is outside a vocabulary of `vocab` entries.
    pub fn check_vocab(&self, vocab: usize) -> Result<()> {
        for (s, r) in self.seq_ranges().enumerate() {
            for i in r.clone() {
                let id = self.host_tokens[i];
                if id as usize >= vocab {
                    bail!(
                        "token id {id} at position {} of sequence {s} is outside the vocabulary (size {vocab})",
                        i - r.start
                    );
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_and_makes_targets() {
        let b = Batch::from_sequences(&[vec![5, 6, 7], vec![8, 9]], &Device::Cpu).unwrap();
        assert_eq!(b.host_cu_seqlens(), &[0, 3, 5]);
        assert_eq!(b.positions.to_vec_u32().unwrap(), vec![0, 1, 2, 0, 1]);
        assert_eq!(b.next_token_targets(), vec![6, 7, NO_TARGET, 9, NO_TARGET]);
        assert!(b.check_vocab(10).is_ok());
        let e = b.check_vocab(9).unwrap_err().to_string();
        assert!(e.contains("token id 9 at position 1 of sequence 1"), "{e}");
    }

    #[test]
    fn refuses_inconsistent_batches() {
        assert!(Batch::from_sequences(&[vec![1u32], vec![]], &Device::Cpu).is_err());
        assert!(Batch::new(vec![1, 2], vec![0, 1], vec![0, 0], &Device::Cpu).is_err());
        assert!(Batch::new(vec![1, 2], vec![0, 2, 2], vec![0, 1], &Device::Cpu).is_err());
    }
}
