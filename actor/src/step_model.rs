//! The model as the rollout loop sees it: something that owns a paged KV cache and turns a batch
//! of sequences into next-token logits. The Llama decoder implements it (`crate::llama`); so does a
//! small fake used to test the scheduler (`crate::fake_model`).

use std::borrow::Cow;

use kernels::cuda::graph_ops::{resolve_tokens_host, FROM_PREV};
use kernels::ops::{read_samples, sample_tokens, SampleSpec};
use kernels::{Device, Tensor};

use crate::block_manager::BlockCopy;

/// `DecodeBatch::from_prev` of a row whose input token is in `DecodeBatch::tokens`.
pub const NO_PREV: u32 = u32::MAX;

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
    /// [S] or empty (= all [`NO_PREV`]): for a sequence whose newest token the previous decode
    /// step sampled and the host has not seen yet (the overlapped loop), that step's row; the
    /// model takes the token from there and `tokens` holds 0.
    pub from_prev: Vec<u32>,
}

impl DecodeBatch {
    pub fn num_seqs(&self) -> usize {
        self.tokens.len()
    }

    /// True when some row's token comes from the previous step's samples.
    pub fn reads_prev(&self) -> bool {
        self.from_prev.iter().any(|&r| r != NO_PREV)
    }

    /// The batch with every token in `tokens`, those of `from_prev` rows looked up in `prev`, the
    /// previous step's samples (the host's copy of what the device does with
    /// `kernels::cuda::graph_ops::resolve_tokens`).
    pub fn resolved(&self, prev: Option<&[(u32, f32)]>) -> anyhow::Result<Cow<'_, DecodeBatch>> {
        if !self.reads_prev() {
            return Ok(Cow::Borrowed(self));
        }
        let prev = prev.ok_or_else(|| {
            anyhow::anyhow!("internal error: a decode row reads a previous step that is not given")
        })?;
        let mut b = self.clone();
        for (t, &r) in b.tokens.iter_mut().zip(&self.from_prev) {
            if r != NO_PREV {
                anyhow::ensure!(
                    (r as usize) < prev.len(),
                    "internal error: decode row reads row {r} of a previous step of {}",
                    prev.len()
                );
                *t = FROM_PREV | r;
            }
        }
        resolve_tokens_host(&mut b.tokens, prev);
        b.from_prev.clear();
        Ok(Cow::Owned(b))
    }
}

/// A decode step handed to the model ([`StepModel::decode_submit`]) whose samples the caller
/// collects with [`StepModel::decode_wait`].
#[derive(Debug, Clone, PartialEq)]
pub enum Submitted {
    /// Already on the host: (token, log-prob) per row.
    Ready(Vec<(u32, f32)>),
    /// Queued on the device: the model's `step`-th submission, of `rows` rows.
    Queued { step: u64, rows: usize },
}

/// Seconds a model's decode calls spent, by kind (clock reads only).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DecodeTimes {
    /// Packing the step's inputs and queueing their upload (CUDA-graph steps).
    pub pack_s: f64,
    /// Launching the captured graph (replays only).
    pub launch_s: f64,
    /// Blocked on the step's results: the device's share of the step as the host sees it.
    pub wait_s: f64,
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

    /// Queues one decode step with sampling, for steps where every row can be sampled by
    /// `kernels::ops::sample_tokens` (at most `MAX_BANNED` banned ids): `specs[i]` draws from row
    /// i. Returns without waiting for the samples where the model can (a GPU model queues the
    /// step, a CUDA graph where possible), so that the host prepares the next step meanwhile;
    /// [`StepModel::decode_wait`] returns them. Row i with `batch.from_prev[i] = r` takes as its
    /// input token the one row r of `prev` sampled: `prev` is the step submitted just before this
    /// one, possibly not waited for yet. The default runs the step at once, op by op, with those
    /// tokens looked up in `prev`'s samples on the host.
    fn decode_submit(
        &mut self,
        batch: &DecodeBatch,
        specs: &[SampleSpec],
        prev: Option<&Submitted>,
    ) -> anyhow::Result<Submitted> {
        submit_at_once(self, batch, specs, prev)
    }

    /// The samples of a submitted step, (token, log-prob) per row: blocks until they are on the
    /// host.
    fn decode_wait(&mut self, step: Submitted) -> anyhow::Result<Vec<(u32, f32)>> {
        match step {
            Submitted::Ready(v) => Ok(v),
            Submitted::Queued { .. } => {
                anyhow::bail!("internal error: this model queues no decode steps")
            }
        }
    }

    /// Waits for queued device work (for timing phases with `REALIGN_PROFILE=1`).
    fn synchronize(&self) -> anyhow::Result<()> {
        Ok(())
    }

    /// Where the decode calls spent their time since the last call (then reset): packing and
    /// uploading inputs, launching, waiting for the device (`RolloutStats::host_time`).
    fn take_decode_times(&mut self) -> DecodeTimes {
        DecodeTimes::default()
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

/// One decode step with sampling, op by op and at once: [`StepModel::decode_logits`], then
/// `sample_tokens` where the logits are; `batch` must not read a previous step.
pub fn decode_sample_now<M: StepModel + ?Sized>(
    model: &mut M,
    batch: &DecodeBatch,
    specs: &[SampleSpec],
) -> anyhow::Result<Vec<(u32, f32)>> {
    anyhow::ensure!(
        !batch.reads_prev(),
        "internal error: an unresolved decode batch"
    );
    let logits = model.decode_logits(batch)?;
    let spec = SampleSpec::pack(specs, logits.device())?;
    Ok(read_samples(&sample_tokens(&logits, &spec)?)?)
}

/// [`StepModel::decode_submit`] run at once (its default): `batch`'s `from_prev` tokens looked up in
/// `prev`'s samples, which must be on the host, then [`decode_sample_now`].
pub fn submit_at_once<M: StepModel + ?Sized>(
    model: &mut M,
    batch: &DecodeBatch,
    specs: &[SampleSpec],
    prev: Option<&Submitted>,
) -> anyhow::Result<Submitted> {
    let prev = match prev {
        Some(Submitted::Ready(v)) => Some(v.as_slice()),
        Some(Submitted::Queued { .. }) => {
            anyhow::bail!("internal error: a decode step run at once follows a queued one")
        }
        None => None,
    };
    let batch = batch.resolved(prev)?;
    Ok(Submitted::Ready(decode_sample_now(model, &batch, specs)?))
}
