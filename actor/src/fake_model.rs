//! A stand-in model for testing the scheduler, the block manager and the rollout loop without a
//! transformer. Its "K/V cache" stores token ids in slots, and its logits are a hash of the whole
//! sequence *as read back through the block tables*. So a wrong slot, a missed copy-on-write or a
//! block freed too early changes the tokens it generates, just as it would with a real model.

use crate::block_manager::BlockCopy;
use crate::step_model::{DecodeBatch, PrefillBatch, StepModel};

/// Slots hold token ids; `EMPTY` marks a slot never written.
pub struct FakeModel {
    pub vocab: usize,
    pub max_context: usize,
    cache: Vec<u32>,
    block_size: usize,
    /// Largest number of blocks the cache had (0 after `free_cache`).
    pub allocated_blocks: usize,
}

const EMPTY: u32 = u32::MAX;

impl FakeModel {
    pub fn new(vocab: usize, max_context: usize) -> FakeModel {
        FakeModel {
            vocab,
            max_context,
            cache: Vec::new(),
            block_size: 0,
            allocated_blocks: 0,
        }
    }

    /// Deterministic logits of a token sequence: a hash-seeded pseudo-random row in [-4, 4).
    pub fn logits_of(&self, tokens: &[u32]) -> Vec<f32> {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &t in tokens {
            assert_ne!(t, EMPTY, "read a KV slot that was never written");
            h = (h ^ t as u64).wrapping_mul(0x100_0000_01b3);
        }
        (0..self.vocab)
            .map(|v| {
                let mut z = h ^ (v as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                z = (z ^ (z >> 31)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z ^= z >> 29;
                (z >> 40) as f32 / (1u64 << 24) as f32 * 8.0 - 4.0
            })
            .collect()
    }
}

impl StepModel for FakeModel {
    fn vocab_size(&self) -> usize {
        self.vocab
    }

    fn max_context(&self) -> usize {
        self.max_context
    }

    fn kv_bytes_per_block(&self, block_size: usize) -> usize {
        block_size * 4
    }

    fn alloc_cache(&mut self, num_blocks: usize, block_size: usize) -> anyhow::Result<()> {
        self.cache = vec![EMPTY; num_blocks * block_size];
        self.block_size = block_size;
        self.allocated_blocks = num_blocks;
        Ok(())
    }

    fn free_cache(&mut self) {
        self.cache = Vec::new();
        self.allocated_blocks = 0;
    }

    fn copy_blocks(&mut self, copies: &[BlockCopy]) -> anyhow::Result<()> {
        let bs = self.block_size;
        for c in copies {
            let (s, d) = (c.src as usize * bs, c.dst as usize * bs);
            self.cache.copy_within(s..s + bs, d);
        }
        Ok(())
    }

    fn prefill(&mut self, batch: &PrefillBatch) -> anyhow::Result<Vec<f32>> {
        for (&t, &slot) in batch.tokens.iter().zip(&batch.slots) {
            self.cache[slot as usize] = t;
        }
        let mut out = Vec::new();
        for w in batch.cu_seqlens.windows(2) {
            // Read the sequence back from the cache, not from the batch.
            let seq: Vec<u32> = batch.slots[w[0] as usize..w[1] as usize]
                .iter()
                .map(|&s| self.cache[s as usize])
                .collect();
            out.extend(self.logits_of(&seq));
        }
        Ok(out)
    }

    fn decode(&mut self, batch: &DecodeBatch) -> anyhow::Result<Vec<f32>> {
        let bs = self.block_size;
        for (&t, &slot) in batch.tokens.iter().zip(&batch.slots) {
            self.cache[slot as usize] = t;
        }
        let mut out = Vec::new();
        for s in 0..batch.num_seqs() {
            let table = &batch.block_tables[s * batch.max_blocks..(s + 1) * batch.max_blocks];
            let seq: Vec<u32> = (0..batch.context_lens[s] as usize)
                .map(|p| self.cache[table[p / bs] as usize * bs + p % bs])
                .collect();
            out.extend(self.logits_of(&seq));
        }
        Ok(out)
    }
}
