//! realign's rollout engine: generates the responses of a batch of prompts with a paged KV cache
//! (vLLM), continuous batching (ORCA), prefix sharing of the n samples of one prompt, and sampling
//! that reports each token's log-prob under the distribution it was drawn from.
//!
//! - `block_manager.rs`: KV blocks, block tables, reference counts, copy on write.
//! - `scheduler.rs`: waiting/running queues, token budget, preemption by recompute.
//! - `sampling.rs`: temperature / top-k / top-p / seeds / log-probs.
//! - `step_model.rs`: the model interface of the loop; `fake_model.rs` a stand-in for tests.
//! - `rollout.rs`: the loop itself.
//! - `llama.rs`: the Llama-family decoder's prefill/decode forward over the paged cache.
//! - `engine.rs`: the entry point: KV budget, weights in, completions out.
//! - `profile.rs`: `REALIGN_PROFILE=1`, time per phase of a rollout.

pub mod block_manager;
pub mod engine;
pub mod fake_model;
pub mod llama;
pub mod profile;
pub mod request;
pub mod rollout;
pub mod sampling;
pub mod scheduler;
pub mod step_model;

pub use engine::{Engine, EngineConfig, KvBudget};
pub use llama::{LANE_MIN_ROWS, MAX_DECODE_LANES};
pub use request::{Completion, FinishReason, HostTime, Request, RolloutStats};
pub use rollout::{run_rollout, RolloutConfig};
pub use sampling::SamplingParams;
