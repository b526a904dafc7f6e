//! actor_gen: the rollout engine (actor::run_rollout: paged block tables, continuous batching,
//! prefix sharing, sampling with log-probs) driving the Llama decoder.
//!
//! The decoder has no incremental attention over a paged K/V cache yet, so [`RecomputeLm`] keeps
//! the *tokens* of each cache slot and recomputes the whole sequence (read back through the block
//! tables) at every step: O(T²) per sequence, fine for the short sequences of CPU runs and tests;
//! a real paged-KV step model plugs into the same `StepModel` trait.

use actor::block_manager::BlockCopy;
use actor::step_model::{DecodeBatch, PrefillBatch, StepModel};
use actor::{run_rollout, Completion, Request, RolloutConfig, RolloutStats};
use anyhow::{bail, ensure, Result};
use kernels::ops::{gather_rows, linear};
use kernels::Tensor;
use model::llama::{forward, Batch, Keep};

use crate::lm::Model;

const EMPTY: u32 = u32::MAX;

/// The decoder as a `StepModel` whose "cache" holds token ids.
pub struct RecomputeLm<'a> {
    model: &'a Model,
    cache: Vec<u32>,
    block_size: usize,
}

impl<'a> RecomputeLm<'a> {
    pub fn new(model: &'a Model) -> Self {
        RecomputeLm {
            model,
            cache: Vec::new(),
            block_size: 0,
        }
    }

    /// [S, V] logits of the last token of each sequence, on the host.
    fn last_logits(&self, seqs: &[Vec<u32>]) -> Result<Vec<f32>> {
        let dev = self.model.device();
        let batch = Batch::from_sequences(seqs, &dev)?;
        let acts = forward(
            &self.model.params,
            &self.model.cfg,
            &batch,
            Keep::OutputOnly,
        )?;
        let last: Vec<u32> = batch.seq_ranges().map(|r| r.end as u32 - 1).collect();
        let rows = Tensor::from_u32(last, &[seqs.len()], &dev)?;
        let h = gather_rows(&acts.hidden, &rows)?; // [S,C]
        let logits = linear(&h, self.model.params.lm_head_weight(), None)?; // [S,V]
        Ok(logits.to_vec_f32()?)
    }

    fn read(&self, slot: u32) -> Result<u32> {
        let t = self.cache[slot as usize];
        ensure!(
            t != EMPTY,
            "internal error: read an unwritten KV slot {slot}"
        );
        Ok(t)
    }
}

impl StepModel for RecomputeLm<'_> {
    fn vocab_size(&self) -> usize {
        self.model.cfg.vocab_size
    }

    fn max_context(&self) -> usize {
        self.model.cfg.max_position_embeddings
    }

    fn kv_bytes_per_block(&self, block_size: usize) -> usize {
        block_size * std::mem::size_of::<u32>()
    }

    fn alloc_cache(&mut self, num_blocks: usize, block_size: usize) -> Result<()> {
        self.cache = vec![EMPTY; num_blocks * block_size];
        self.block_size = block_size;
        Ok(())
    }

    fn free_cache(&mut self) {
        self.cache = Vec::new();
    }

    fn copy_blocks(&mut self, copies: &[BlockCopy]) -> Result<()> {
        let bs = self.block_size;
        for c in copies {
            let (s, d) = (c.src as usize * bs, c.dst as usize * bs);
            self.cache.copy_within(s..s + bs, d);
        }
        Ok(())
    }

    fn prefill(&mut self, batch: &PrefillBatch) -> Result<Vec<f32>> {
        for (&t, &slot) in batch.tokens.iter().zip(&batch.slots) {
            self.cache[slot as usize] = t;
        }
        let mut seqs = Vec::with_capacity(batch.num_seqs());
        for w in batch.cu_seqlens.windows(2) {
            let (a, b) = (w[0] as usize, w[1] as usize);
            if batch.positions[a] != 0 {
                bail!("the recompute step model needs prefills that start at position 0");
            }
            seqs.push(
                batch.slots[a..b]
                    .iter()
                    .map(|&s| self.read(s))
                    .collect::<Result<Vec<u32>>>()?,
            );
        }
        self.last_logits(&seqs)
    }

    fn decode(&mut self, batch: &DecodeBatch) -> Result<Vec<f32>> {
        let bs = self.block_size;
        for (&t, &slot) in batch.tokens.iter().zip(&batch.slots) {
            self.cache[slot as usize] = t;
        }
        let mut seqs = Vec::with_capacity(batch.num_seqs());
        for s in 0..batch.num_seqs() {
            let table = &batch.block_tables[s * batch.max_blocks..(s + 1) * batch.max_blocks];
            seqs.push(
                (0..batch.context_lens[s] as usize)
                    .map(|p| self.read(table[p / bs] * bs as u32 + (p % bs) as u32))
                    .collect::<Result<Vec<u32>>>()?,
            );
        }
        self.last_logits(&seqs)
    }
}

/// Generates every request's samples with `model`; completions come back ordered by request,
/// then sample. The cache exists only during the call.
pub fn generate(model: &Model, requests: &[Request]) -> Result<(Vec<Completion>, RolloutStats)> {
    let block_size = 16;
    let blocks_per_seq =
        |r: &Request| (r.tokens.len() + r.sampling.max_new_tokens).div_ceil(block_size) + 1;
    let num_blocks: usize = requests.iter().map(|r| r.n * blocks_per_seq(r)).sum();
    let cfg = RolloutConfig {
        block_size,
        num_blocks: num_blocks.max(1),
        max_batch_tokens: 16384,
        max_running: requests.iter().map(|r| r.n).sum::<usize>().max(1),
        share_prefixes: true,
    };
    let mut lm = RecomputeLm::new(model);
    run_rollout(&mut lm, requests, &cfg)
}
