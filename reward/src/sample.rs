//! What a reward sees (one [`Sample`] per rollout) and what it returns (one [`Score`] per sample).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Why generation stopped for this response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model emitted an end-of-sequence / stop token.
    Stop,
    /// The response hit the max-new-tokens limit (truncated).
    Length,
}

/// One rollout to score: the prompt, the response, and the dataset row it came from.
///
/// Texts and tokens are both given so that rule rewards can work on text and model rewards on
/// tokens without detokenising or retokenising.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// The prompt as the policy saw it (chat template already applied).
    pub prompt: String,
    pub prompt_tokens: Vec<u32>,
    /// The generated text, without the prompt.
    pub response: String,
    pub response_tokens: Vec<u32>,
    pub finish_reason: FinishReason,
    /// The dataset row's other fields, e.g. `{"answer": "42"}` for a reference answer.
    #[serde(default)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Sample {
    /// A sample with text only (no tokens) and `finish_reason = stop`; handy in tests and for
    /// rewards that only read text.
    pub fn from_text(prompt: &str, response: &str) -> Self {
        Sample {
            prompt: prompt.to_string(),
            prompt_tokens: Vec::new(),
            response: response.to_string(),
            response_tokens: Vec::new(),
            finish_reason: FinishReason::Stop,
            extra: serde_json::Map::new(),
        }
    }

    /// Builder: set one extra field (e.g. the reference answer).
    pub fn with_extra(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.extra.insert(key.to_string(), value.into());
        self
    }

    /// Builder: set the finish reason.
    pub fn with_finish_reason(mut self, finish_reason: FinishReason) -> Self {
        self.finish_reason = finish_reason;
        self
    }
}

/// The score of one sample, plus optional named sub-scores that are logged as `reward/NAME/mean`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Score {
    pub value: f32,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sub_scores: BTreeMap<String, f32>,
}

impl Score {
    pub fn new(value: f32) -> Self {
        Score {
            value,
            sub_scores: BTreeMap::new(),
        }
    }

    /// Builder: add one named sub-score.
    pub fn with_sub(mut self, name: &str, value: f32) -> Self {
        self.sub_scores.insert(name.to_string(), value);
        self
    }
}

impl From<f32> for Score {
    fn from(value: f32) -> Self {
        Score::new(value)
    }
}
