//! What callers hand the engine and what they get back.

use serde::{Deserialize, Serialize};

use crate::sampling::SamplingParams;

/// One prompt to complete `n` times.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Prompt token ids (chat template already applied).
    pub tokens: Vec<u32>,
    pub sampling: SamplingParams,
    /// Samples to draw for this prompt (a GRPO group); they share the prompt's KV blocks.
    pub n: usize,
    /// Sample i draws with the key `sampling::sample_key(seed, i)`: same seed + same inputs = same
    /// tokens.
    pub seed: u64,
}

/// Why a sample stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// Emitted a stop token (kept as the last token).
    Stop,
    /// Reached `max_new_tokens` or the model's context length.
    Length,
    /// The KV cache cannot hold this sequence even with every other sequence preempted; its
    /// tokens so far are returned. A larger KV budget fixes it.
    CacheFull,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::CacheFull => "cache_full",
        }
    }
}

/// One sample of one request: the response only (no prompt).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    /// Index of the request in the input.
    pub request: usize,
    /// Index of the sample within the request (0..n).
    pub sample: usize,
    pub tokens: Vec<u32>,
    /// Log-prob of each token under the distribution it was sampled from.
    pub logprobs: Vec<f32>,
    pub finish_reason: FinishReason,
}

/// What one rollout did; the scheduler turns these into metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RolloutStats {
    /// Engine steps (each runs a prefill forward, a decode forward, or both).
    pub steps: usize,
    pub prefill_tokens: usize,
    pub decode_tokens: usize,
    /// Sequences evicted for lack of KV blocks (and recomputed later).
    pub preemptions: usize,
    /// Copy-on-write copies of shared partial blocks.
    pub block_copies: usize,
    pub kv_blocks: usize,
    pub block_size: usize,
    pub kv_bytes_per_block: usize,
    /// Most blocks in use at once, and their bytes.
    pub peak_kv_blocks: usize,
    pub peak_kv_bytes: usize,
    /// Seconds per phase (schedule, forward, sampling, ... and the model's own phases), filled
    /// only with `REALIGN_PROFILE=1`.
    pub profile: Vec<(&'static str, f64)>,
    /// Decode steps that replayed a captured CUDA graph.
    pub graph_replays: usize,
    /// Overlapped loop: tokens computed for sequences that had finished in the step before
    /// (stops are seen one step late), discarded.
    pub discarded_tokens: usize,
    /// Overlapped loop: times the in-flight step was applied before scheduling the next one
    /// because that step might preempt (or at the end).
    pub drains: usize,
    /// Where the rollout loop's wall time went, always measured (clock reads only, no syncs).
    pub host_time: HostTime,
}

/// Wall seconds of the rollout loop by phase, measured with clock reads only (no device syncs), so
/// that CUDA graphs stay on. In the serial loop (`RolloutConfig::overlap` off) the host and the
/// device take turns: a decode step's inputs depend on the tokens the previous step sampled, so
/// every second of host work here is a second the GPU idles. Overlapped, the host's work for step
/// t+1 runs while the device computes step t, and `decode_wait_s` is what is left of the device's
/// step after it. `decode_wait_s` is the time blocked on a decode step's results; the rest of
/// `decode_s` is host work (packing and uploading inputs, launching).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HostTime {
    /// The whole loop.
    pub total_s: f64,
    /// `Scheduler::schedule`: admission, block allocation, batch building.
    pub schedule_s: f64,
    /// Prefill steps: forward, block copies and sampling (device time included).
    pub prefill_s: f64,
    /// Decode steps: submitting them to the model, and waiting for their sampled tokens.
    pub decode_s: f64,
    /// Part of `decode_s` spent waiting for the device's results.
    pub decode_wait_s: f64,
    /// Part of `decode_s` spent packing and queueing the inputs' upload (CUDA-graph steps).
    pub decode_pack_s: f64,
    /// Part of `decode_s` spent in the graph launch call (replays).
    pub decode_launch_s: f64,
    /// Appending sampled tokens, finishing sequences, updating the running set.
    pub bookkeeping_s: f64,
    /// Steps that ran a decode.
    pub decode_steps: usize,
}

impl HostTime {
    /// Host seconds per decode step outside the wait for the device: scheduling, input
    /// preparation and bookkeeping (prefill excluded).
    pub fn host_per_decode_step_s(&self) -> f64 {
        let host = self.schedule_s + (self.decode_s - self.decode_wait_s) + self.bookkeeping_s;
        host / self.decode_steps.max(1) as f64
    }
}
