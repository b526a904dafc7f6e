//! Numeric-answer match: extract the final number of the response and compare it with the
//! reference (GSM8K / MATH style correctness reward).

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::reference::references;
use crate::extract::extract_final_number;
use crate::reward_trait::SyncReward;
use crate::sample::{Sample, Score};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumericMatchConfig {
    /// Dataset field holding the reference: a number, a string such as "72" or "...#### 72", or
    /// an array of acceptable answers.
    #[serde(default = "super::default_reference_key")]
    pub reference_key: String,
    /// Match when |answer - reference| <= abs_tolerance + rel_tolerance * |reference|.
    #[serde(default = "default_abs_tolerance")]
    pub abs_tolerance: f64,
    #[serde(default)]
    pub rel_tolerance: f64,
    /// Score for a correct answer.
    #[serde(default = "super::default_hit")]
    pub hit: f32,
    /// Score for a wrong answer, or for a response with no number at all.
    #[serde(default)]
    pub miss: f32,
}

fn default_abs_tolerance() -> f64 {
    1e-6
}

impl Default for NumericMatchConfig {
    fn default() -> Self {
        NumericMatchConfig {
            reference_key: super::default_reference_key(),
            abs_tolerance: default_abs_tolerance(),
            rel_tolerance: 0.0,
            hit: 1.0,
            miss: 0.0,
        }
    }
}

pub struct NumericMatch {
    config: NumericMatchConfig,
}

impl NumericMatch {
    pub fn new(config: NumericMatchConfig) -> Result<Self> {
        if !(config.abs_tolerance >= 0.0 && config.rel_tolerance >= 0.0) {
            bail!(
                "numeric_match: abs_tolerance and rel_tolerance must be >= 0 (got {} and {})",
                config.abs_tolerance,
                config.rel_tolerance
            );
        }
        Ok(NumericMatch { config })
    }

    fn is_correct(&self, answer: f64, reference: f64) -> bool {
        (answer - reference).abs()
            <= self.config.abs_tolerance + self.config.rel_tolerance * reference.abs()
    }
}

/// A reference as a number: JSON numbers as they are; strings go through the same extraction
/// as responses, so "72", "1,234", "\\frac{3}{4}" and "... #### 72" all work.
fn reference_number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => extract_final_number(s),
        _ => None,
    }
}

impl SyncReward for NumericMatch {
    fn reward_name(&self) -> &str {
        "numeric_match"
    }

    fn score_sync(&self, samples: &[Sample]) -> Result<Vec<Score>> {
        let mut scores = Vec::with_capacity(samples.len());
        for (i, sample) in samples.iter().enumerate() {
            let mut wanted = Vec::new();
            for value in references(sample, &self.config.reference_key, i, "numeric_match")? {
                let Some(v) = reference_number(value) else {
                    bail!(
                        "numeric_match: sample {i}: reference '{}' = {value} holds no number",
                        self.config.reference_key
                    );
                };
                wanted.push(v);
            }
            let correct = extract_final_number(&sample.response)
                .is_some_and(|a| wanted.iter().any(|&r| self.is_correct(a, r)));
            scores.push(Score::new(if correct {
                self.config.hit
            } else {
                self.config.miss
            }));
        }
        Ok(scores)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(reward: &NumericMatch, response: &str, reference: Value) -> Result<f32> {
        let sample = Sample::from_text("q", response).with_extra("answer", reference);
        Ok(reward.score_sync(&[sample])?[0].value)
    }

    #[test]
    fn scores_correct_wrong_and_missing_answers() {
        let r = NumericMatch::new(NumericMatchConfig::default()).unwrap();
        assert_eq!(score(&r, "5 + 7 = 12\n#### 12", "12".into()).unwrap(), 1.0);
        assert_eq!(score(&r, "so \\boxed{1,234}", 1234.into()).unwrap(), 1.0);
        assert_eq!(score(&r, "The answer is -3.5", (-3.5).into()).unwrap(), 1.0);
        assert_eq!(
            score(&r, "The answer is 0.75", "\\frac{3}{4}".into()).unwrap(),
            1.0
        );
        // A GSM8K reference carries its reasoning before "####".
        assert_eq!(
            score(&r, "The answer is 72.", "48 + 24 = 72\n#### 72".into()).unwrap(),
            1.0
        );
        assert_eq!(score(&r, "The answer is 13", "12".into()).unwrap(), 0.0);
        assert_eq!(score(&r, "no idea", "12".into()).unwrap(), 0.0);
        // Any of several acceptable answers.
        assert_eq!(
            score(&r, "#### 0.5", serde_json::json!(["1/2", 50])).unwrap(),
            1.0
        );
    }

    #[test]
    fn tolerance_and_custom_scores() {
        let r = NumericMatch::new(NumericMatchConfig {
            rel_tolerance: 0.01,
            hit: 2.0,
            miss: -1.0,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(score(&r, "#### 100.9", 100.into()).unwrap(), 2.0);
        assert_eq!(score(&r, "#### 101.5", 100.into()).unwrap(), -1.0);
    }

    #[test]
    fn missing_or_non_numeric_reference_is_an_error() {
        let r = NumericMatch::new(NumericMatchConfig::default()).unwrap();
        let sample = Sample::from_text("q", "#### 1").with_extra("solution", "1");
        let msg = format!("{:#}", r.score_sync(&[sample]).unwrap_err());
        assert!(
            msg.contains("sample 0 has no field 'answer'") && msg.contains("solution"),
            "{msg}"
        );
        let msg = format!("{:#}", score(&r, "#### 1", "unknown".into()).unwrap_err());
        assert!(msg.contains("holds no number"), "{msg}");
    }
}
