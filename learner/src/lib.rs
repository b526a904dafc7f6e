//! realign learner: turns rollouts (or SFT / preference data) into weight updates.
//!
//! - `objectives/`: SFT NLL, Bradley–Terry, PPO policy (clip, dual clip, entropy, KL, TIS) and
//!   clipped value losses, each with its closed-form gradient and metrics.
//! - `advantages/`: GAE, GRPO, RLOO, REINFORCE++, whitening, KL reward shaping, KL controllers.
//! - `metrics.rs`: per-step metric accumulation with the names users know.
//!
//! Everything here works on packed sequences: per-token `[N]` slices plus `cu_seqlens[S+1]`.

// `!(x > 0.0)` is used on purpose in argument checks: unlike `x <= 0.0` it also rejects NaN.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

pub mod advantages;
pub mod batch;
pub mod layout;
pub mod metrics;
pub mod objectives;
pub mod optim;
pub mod real;
pub mod train;

pub use metrics::Metrics;
pub use real::Real;
