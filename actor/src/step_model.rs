//! The model as the rollout loop sees it: something that owns a paged KV cache and turns a batch
//! of sequences into next-token logits. The Llama decoder implements it (`crate::llama`); so does a
//! small fake used to test the scheduler (`crate::fake_model`).

use kernels::ops::{read_samples, sample_tokens, SampleSpec};
use kernels::{Device, Tensor};

use crate::block_manager::BlockCopy;

/// Whole prompts (or whole recomputed sequences after preemption), packed back to back.
#[derive(Debug, Clone, Default)]
pub struct PrefillBatch {
    /// [N] token ids of all sequences.
    pub tokens: Vec<u32>,
    /// [N] position of each token in its sequence.
    pub positions: Vec<u32>,
    /// [S+1] offsets of the sequences in `tokens`.
    pub cu_seqlens: Vec<u32>,
    /// [N] KV-cache slot each token's K/V goes to.
    pub slots: Vec<u32>,
}

impl PrefillBatch {
    pub fn num_seqs(&self) -> usize {
        self.cu_seqlens.len().saturating_sub(1)
    }
}

/// One new token per sequence, attending to everything in its blocks.
#[derive(Debug, Clone, Default)]
pub struct DecodeBatch {
    /// [S] the newest token of each sequence (its K/V is not in the cache yet).
    pub tokens: Vec<u32>,
    /// [S] its position.
    pub positions: Vec<u32>,
    /// [S] the slot its K/V goes to.
    pub slots: Vec<u32>,
    /// [S, max_blocks] block ids of each sequence, padded with 0 past its last block.
    pub block_tables: Vec<u32>,
    pub max_blocks: usize,
    /// [S] tokens each sequence attends to, the new one included (position + 1).
    pub context_lens: Vec<u32>,
}

impl DecodeBatch {
    pub fn num_seqs(&self) -> usize {
        self.tokens.len()
    }
}

/// A decoder with a paged KV cache.
pub trait StepModel {
    fn vocab_size(&self) -> usize;
    /// Longest sequence (prompt + response) the model supports.
    fn max_context(&self) -> usize;
    /// Bytes of K and V, all layers, for one block of `block_size` tokens.
    fn kv_bytes_per_block(&self, block_size: usize) -> usize;
    /// Allocates the cache: `num_blocks` blocks of `block_size` tokens.
    fn alloc_cache(&mut self, num_blocks: usize, block_size: usize) -> anyhow::Result<()>;
    /// Releases the cache's memory completely.
    fn free_cache(&mut self);
    /// Copies whole blocks (copy on write), before this step's K/V writes.
    fn copy_blocks(&mut self, copies: &[BlockCopy]) -> anyhow::Result<()>;
    /// Writes the batch's K/V and returns [S, V] logits of each sequence's last token, on the host.
    fn prefill(&mut self, batch: &PrefillBatch) -> anyhow::Result<Vec<f32>>;
    /// Writes the new tokens' K/V and returns [S, V] logits, on the host.
    fn decode(&mut self, batch: &DecodeBatch) -> anyhow::Result<Vec<f32>>;

    /// [`StepModel::prefill`] with the [S, V] logits left where they were computed (the GPU for a
    /// GPU model), so that sampling there copies only tokens to the host. The rollout loop calls
    /// this one; the default wraps the host logits.
    fn prefill_logits(&mut self, batch: &PrefillBatch) -> anyhow::Result<Tensor> {
        let s = batch.num_seqs();
        let v = self.vocab_size();
        Ok(Tensor::from_f32(
            self.prefill(batch)?,
            &[s, v],
            &Device::Cpu,
        )?)
    }

    /// [`StepModel::decode`] with the [S, V] logits left on the model's device.
    fn decode_logits(&mut self, batch: &DecodeBatch) -> anyhow::Result<Tensor> {
        let s = batch.num_seqs();
        let v = self.vocab_size();
        Ok(Tensor::from_f32(
            self.decode(batch)?,
            &[s, v],
            &Device::Cpu,
        )?)
    }

    /// One decode step with sampling, for steps where every row can be sampled by
    /// `kernels::ops::sample_tokens` (no top-k / top-p): `specs[i]` draws from row i. Returns
    /// (token, log-prob) per sequence. The default runs [`StepModel::decode_logits`] then the op; a
    /// GPU model may replay the whole step as a CUDA graph.
    fn decode_sample(
        &mut self,
        batch: &DecodeBatch,
        specs: &[SampleSpec],
    ) -> anyhow::Result<Vec<(u32, f32)>> {
        let logits = self.decode_logits(batch)?;
        let spec = SampleSpec::pack(specs, logits.device())?;
        Ok(read_samples(&sample_tokens(&logits, &spec)?)?)
    }

    /// Waits for queued device work (for timing phases with `REALIGN_PROFILE=1`).
    fn synchronize(&self) -> anyhow::Result<()> {
        Ok(())
    }

    /// Seconds spent blocked on decode results since the last call (then reset to 0): the device's
    /// share of a decode step as seen from the host (`RolloutStats::host_time`).
    fn take_wait_s(&mut self) -> f64 {
        0.0
    }

    /// Decode steps replayed from a captured CUDA graph so far.
    fn graph_replays(&self) -> usize {
        0
    }

    /// Seconds spent per named phase inside the model's steps so far (filled only while profiling).
    fn profile(&self) -> Vec<(&'static str, f64)> {
        Vec::new()
    }
}
