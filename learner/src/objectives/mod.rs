//! Objectives: pure functions from per-token inputs (packed `[N]` slices with masks) to a loss
//! share, its closed-form gradient with respect to the inputs that carry one, and metrics.
//! Generic over f32 / f64 so the tests can check every gradient with f64 finite differences.

pub mod aggregation;
pub mod kl;
pub mod policy;
pub mod reward_model;
pub mod sft;
pub mod value;

pub use aggregation::{token_weights, LossAgg, Normaliser};
pub use kl::KlEstimator;
pub use policy::{policy_loss, KlLoss, PolicyBatch, PolicyLossConfig, PolicyLossOutput};
pub use reward_model::{bradley_terry_loss, RewardModelOutput};
pub use sft::{sft_grad_logprob, sft_loss, SftOutput};
pub use value::{value_loss, ValueBatch, ValueLossConfig, ValueLossOutput};
