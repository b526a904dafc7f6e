//! Exact match of the whole response against the reference string.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::reference::{reference_text, references};
use crate::reward_trait::SyncReward;
use crate::sample::{Sample, Score};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExactMatchConfig {
    /// Dataset field holding the reference string (or an array of acceptable strings).
    #[serde(default = "super::default_reference_key")]
    pub reference_key: String,
    /// Strip leading/trailing whitespace from both sides before comparing.
    #[serde(default = "yes")]
    pub trim: bool,
    /// Compare case-insensitively.
    #[serde(default)]
    pub ignore_case: bool,
    #[serde(default = "super::default_hit")]
    pub hit: f32,
    #[serde(default)]
    pub miss: f32,
}

fn yes() -> bool {
    true
}

impl Default for ExactMatchConfig {
    fn default() -> Self {
        ExactMatchConfig {
            reference_key: super::default_reference_key(),
            trim: true,
            ignore_case: false,
            hit: 1.0,
            miss: 0.0,
        }
    }
}

pub struct ExactMatch {
    config: ExactMatchConfig,
}

impl ExactMatch {
    pub fn new(config: ExactMatchConfig) -> Self {
        ExactMatch { config }
    }

    fn normalise(&self, s: &str) -> String {
        let s = if self.config.trim { s.trim() } else { s };
        if self.config.ignore_case {
            s.to_lowercase()
        } else {
            s.to_string()
        }
    }
}

impl SyncReward for ExactMatch {
    fn reward_name(&self) -> &str {
        "exact_match"
    }

    fn score_sync(&self, samples: &[Sample]) -> Result<Vec<Score>> {
        let mut scores = Vec::with_capacity(samples.len());
        for (i, sample) in samples.iter().enumerate() {
            let response = self.normalise(&sample.response);
            let refs = references(sample, &self.config.reference_key, i, "exact_match")?;
            let hit = refs
                .iter()
                .any(|r| self.normalise(&reference_text(r)) == response);
            scores.push(Score::new(if hit {
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

    #[test]
    fn trims_and_optionally_ignores_case() {
        let sample = |resp: &str| Sample::from_text("q", resp).with_extra("answer", "Paris");
        let strict = ExactMatch::new(ExactMatchConfig::default());
        let loose = ExactMatch::new(ExactMatchConfig {
            ignore_case: true,
            ..Default::default()
        });
        let batch = [sample(" Paris\n"), sample("paris"), sample("Paris, France")];
        let s: Vec<f32> = strict
            .score_sync(&batch)
            .unwrap()
            .iter()
            .map(|s| s.value)
            .collect();
        assert_eq!(s, [1.0, 0.0, 0.0]);
        let l: Vec<f32> = loose
            .score_sync(&batch)
            .unwrap()
            .iter()
            .map(|s| s.value)
            .collect();
        assert_eq!(l, [1.0, 1.0, 0.0]);
    }

    #[test]
    fn numeric_and_list_references() {
        let r = ExactMatch::new(ExactMatchConfig::default());
        let a = Sample::from_text("q", "7").with_extra("answer", 7);
        let b = Sample::from_text("q", "yes").with_extra("answer", serde_json::json!(["y", "yes"]));
        let got: Vec<f32> = r
            .score_sync(&[a, b])
            .unwrap()
            .iter()
            .map(|s| s.value)
            .collect();
        assert_eq!(got, [1.0, 1.0]);
    }
}
