//! Training steps over the model's explicit forward/backward: SFT, reward model, PPO actor and
//! critic. Each runs a mini-batch as packed micro-batches under a token budget, computes its
//! objective on the host in f32, accumulates f32 gradients, then clips and steps AdamW once.

pub mod actor;
pub mod common;
pub mod critic;
pub mod logprobs;
pub mod ppo;
pub mod reward_model;
pub mod sft;

pub use actor::{ActorStep, PendingActorStep};
pub use common::zero_grads;
pub use critic::CriticStep;
pub use logprobs::response_logprobs;
pub use ppo::{update_actor, update_critic, Trainee, UpdateMetrics};
pub use reward_model::{score_sequences, Pair, RewardModelStep};
pub use sft::{PendingSftStep, SftStep};
