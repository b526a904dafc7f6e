//! Length penalty: zero up to a target length, then a linear penalty per extra token (or
//! character), optionally capped, plus an optional penalty for truncated responses.
//!
//! With target = L_max - L_cache, slope = 1 / L_cache, max_penalty = 1 this is DAPO's soft
//! overlong punishment.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::reward_trait::SyncReward;
use crate::sample::{FinishReason, Sample, Score};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LengthUnit {
    /// Response tokens (needs `response_tokens`).
    #[default]
    Tokens,
    /// Unicode characters of the response text.
    Chars,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LengthPenaltyConfig {
    #[serde(default)]
    pub unit: LengthUnit,
    /// Lengths up to this are not penalised.
    pub target: usize,
    /// Penalty per unit of length above `target`.
    pub slope: f32,
    /// Largest penalty from length (before `truncated_penalty`); unbounded if unset.
    #[serde(default)]
    pub max_penalty: Option<f32>,
    /// Extra penalty when the response hit the max-new-tokens limit.
    #[serde(default)]
    pub truncated_penalty: f32,
}

pub struct LengthPenalty {
    config: LengthPenaltyConfig,
}

impl LengthPenalty {
    pub fn new(config: LengthPenaltyConfig) -> Result<Self> {
        if config.slope < 0.0
            || config.max_penalty.is_some_and(|m| m < 0.0)
            || config.truncated_penalty < 0.0
        {
            bail!("length_penalty: slope, max_penalty and truncated_penalty are penalty sizes and must be >= 0");
        }
        Ok(LengthPenalty { config })
    }
}

impl SyncReward for LengthPenalty {
    fn reward_name(&self) -> &str {
        "length_penalty"
    }

    fn score_sync(&self, samples: &[Sample]) -> Result<Vec<Score>> {
        let c = &self.config;
        let mut scores = Vec::with_capacity(samples.len());
        for (i, s) in samples.iter().enumerate() {
            let len = match c.unit {
                LengthUnit::Tokens => {
                    if s.response_tokens.is_empty() && !s.response.is_empty() {
                        bail!("length_penalty: sample {i} has response text but no response tokens; use unit = \"chars\" or pass tokens");
                    }
                    s.response_tokens.len()
                }
                LengthUnit::Chars => s.response.chars().count(),
            };
            let over = len.saturating_sub(c.target) as f32;
            let mut penalty = c.slope * over;
            if let Some(max) = c.max_penalty {
                penalty = penalty.min(max);
            }
            if s.finish_reason == FinishReason::Length {
                penalty += c.truncated_penalty;
            }
            scores.push(Score::new(-penalty));
        }
        Ok(scores)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(n: usize) -> Sample {
        Sample {
            response_tokens: vec![7; n],
            ..Sample::from_text("q", &"x".repeat(n))
        }
    }

    #[test]
    fn dapo_style_soft_overlong_penalty() {
        // L_max = 20, L_cache = 4: free up to 16, then -1/4 per token, at most -1.
        let cfg = LengthPenaltyConfig {
            unit: LengthUnit::Tokens,
            target: 16,
            slope: 0.25,
            max_penalty: Some(1.0),
            truncated_penalty: 0.5,
        };
        let r = LengthPenalty::new(cfg).unwrap();
        let batch = [
            tokens(10),
            tokens(16),
            tokens(18),
            tokens(30),
            tokens(20).with_finish_reason(FinishReason::Length),
        ];
        let got: Vec<f32> = r
            .score_sync(&batch)
            .unwrap()
            .iter()
            .map(|s| s.value)
            .collect();
        assert_eq!(got, [0.0, 0.0, -0.5, -1.0, -1.5]);
    }

    #[test]
    fn chars_unit_and_missing_tokens() {
        let cfg = LengthPenaltyConfig {
            unit: LengthUnit::Chars,
            target: 2,
            slope: 1.0,
            max_penalty: None,
            truncated_penalty: 0.0,
        };
        let r = LengthPenalty::new(cfg.clone()).unwrap();
        assert_eq!(
            r.score_sync(&[Sample::from_text("q", "héllo")]).unwrap()[0].value,
            -3.0
        );
        let r = LengthPenalty::new(LengthPenaltyConfig {
            unit: LengthUnit::Tokens,
            ..cfg
        })
        .unwrap();
        let msg = format!(
            "{:#}",
            r.score_sync(&[Sample::from_text("q", "hello")])
                .unwrap_err()
        );
        assert!(
            msg.contains("sample 0 has response text but no response tokens"),
            "{msg}"
        );
    }
}
