//! Advantage estimators and reward shaping over packed sequences (`[N]` per token, `[S]` per
//! sequence, `cu_seqlens[S+1]`). No gradients flow through any of this.

pub mod gae;
pub mod group;
pub mod kl_controller;
pub mod kl_reward;
pub mod reinforce_pp;
pub mod stats;
pub mod whiten;

pub use gae::{gae, GaeOutput};
pub use group::{broadcast_to_tokens, grpo_advantages, rloo_advantages, subtract_group_mean};
pub use kl_controller::KlController;
pub use kl_reward::kl_shaped_rewards;
pub use reinforce_pp::{discounted_returns, reinforce_pp_advantages};
pub use stats::{advantage_metrics, explained_variance};
pub use whiten::{masked_mean_var, masked_whiten};
