//! Rule rewards: cheap, deterministic checks on the response text.
//!
//! Each rule is a [`SyncReward`](crate::SyncReward) with its options in a serde struct (the same
//! struct the `[reward]` config section deserialises into). Binary rules score `hit` (default 1)
//! or `miss` (default 0).

mod exact_match;
mod format_check;
mod length_penalty;
mod numeric_match;
mod reference;
mod regex_match;

pub use exact_match::{ExactMatch, ExactMatchConfig};
pub use format_check::{FormatCheck, FormatCheckConfig, FormatPreset};
pub use length_penalty::{LengthPenalty, LengthPenaltyConfig, LengthUnit};
pub use numeric_match::{NumericMatch, NumericMatchConfig};
pub use regex_match::{RegexMatch, RegexMatchConfig};

pub(crate) fn default_reference_key() -> String {
    "answer".to_string()
}

pub(crate) fn default_hit() -> f32 {
    1.0
}
