//! Batching: packing without padding, micro-batches under a token budget, PPO mini-batches with
//! seeded shuffling over several passes, and token-balanced data-parallel partitions.

pub mod balance;
pub mod micro;
pub mod minibatch;
pub mod pack;

pub use balance::{balance_by_tokens, rank_loads};
pub use micro::split_by_token_budget;
pub use minibatch::{minibatch_schedule, MiniBatchConfig};
pub use pack::{pack, Field, PackedBatch, Sequence, NO_TARGET};
