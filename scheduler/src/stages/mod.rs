//! The stages a config chains: supervised fine-tuning, reward-model training, and RL.

pub mod common;
pub mod policy_pairs;
pub mod rl;
pub mod rm;
pub mod sft;
