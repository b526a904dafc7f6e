//! realign rewards: the [`Reward`] trait and the built-in rewards.
//!
//! - `sample.rs`: what a reward sees ([`Sample`]) and returns ([`Score`]).
//! - `reward_trait.rs`: the [`Reward`] trait, [`SyncReward`] and [`reward_fn`] for sync code.
//! - `extract.rs`: final-answer number extraction.
//! - `rules/`: numeric match, exact match, regex match, format checks, length penalty.
//! - `weighted_sum.rs`: a weighted sum of rewards with per-component sub-scores.
//! - `model_reward.rs`: a `*ForSequenceClassification` checkpoint scoring the last token.
//! - `external/`: plugin processes speaking JSON lines (protocol in docs/rewards.md).
//! - `shaping.rs`: scale, bias, clip and running normalisation.
//! - `pipeline.rs`: a reward plus its shaping, producing the metrics the scheduler logs.
//! - `config.rs`: the `[reward]` config section and [`build_reward`].

pub mod config;
pub mod external;
pub mod extract;
pub mod model_reward;
mod pipeline;
mod reward_trait;
pub mod rules;
mod sample;
pub mod shaping;
mod weighted_sum;

pub use config::{build_pipeline, build_reward, RewardConfig, RewardSpec};
pub use external::{ExternalConfig, ExternalReward, PluginError};
pub use model_reward::{ModelReward, ModelRewardConfig};
pub use pipeline::{RewardPipeline, ScoredBatch};
pub use reward_trait::{reward_fn, BoxFuture, FnReward, IntoScore, Reward, SyncReward};
pub use sample::{FinishReason, Sample, Score};
pub use shaping::{RunningStats, Shaper, ShapingConfig, ShapingState};
pub use weighted_sum::{Component, WeightedSum};
