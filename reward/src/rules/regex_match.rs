//! Regex match: the response contains a pattern, or the pattern's capture equals the reference.

use anyhow::{Context, Result};
use regex::Regex;
use serde::{Deserialize, Serialize};

use super::reference::{reference_text, references};
use crate::reward_trait::SyncReward;
use crate::sample::{Sample, Score};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegexMatchConfig {
    /// A Rust `regex` pattern, searched anywhere in the response (anchor it with ^...$ to match
    /// the whole response).
    pub pattern: String,
    /// When set, the reward is a hit only if the first capture group (the whole match if the
    /// pattern has no groups) of the LAST match equals this dataset field, after trimming.
    /// E.g. pattern = "<answer>(.*?)</answer>", reference_key = "answer".
    #[serde(default)]
    pub reference_key: Option<String>,
    #[serde(default = "super::default_hit")]
    pub hit: f32,
    #[serde(default)]
    pub miss: f32,
}

pub struct RegexMatch {
    config: RegexMatchConfig,
    regex: Regex,
}

impl RegexMatch {
    pub fn new(config: RegexMatchConfig) -> Result<Self> {
        let regex = Regex::new(&config.pattern)
            .with_context(|| format!("regex_match: invalid pattern {:?}", config.pattern))?;
        Ok(RegexMatch { config, regex })
    }

    fn is_hit(&self, sample: &Sample, index: usize) -> Result<bool> {
        let Some(key) = &self.config.reference_key else {
            return Ok(self.regex.is_match(&sample.response));
        };
        let refs = references(sample, key, index, "regex_match")?;
        let Some(caps) = self.regex.captures_iter(&sample.response).last() else {
            return Ok(false);
        };
        let captured = caps
            .get(1)
            .or_else(|| caps.get(0))
            .map_or("", |m| m.as_str())
            .trim();
        Ok(refs.iter().any(|r| reference_text(r).trim() == captured))
    }
}

impl SyncReward for RegexMatch {
    fn reward_name(&self) -> &str {
        "regex_match"
    }

    fn score_sync(&self, samples: &[Sample]) -> Result<Vec<Score>> {
        samples
            .iter()
            .enumerate()
            .map(|(i, s)| {
                Ok(Score::new(if self.is_hit(s, i)? {
                    self.config.hit
                } else {
                    self.config.miss
                }))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(r: &RegexMatch, batch: &[Sample]) -> Vec<f32> {
        r.score_sync(batch)
            .unwrap()
            .iter()
            .map(|s| s.value)
            .collect()
    }

    #[test]
    fn presence_match() {
        let r = RegexMatch::new(RegexMatchConfig {
            pattern: r"(?i)\bthank you\b".into(),
            reference_key: None,
            hit: 1.0,
            miss: -1.0,
        })
        .unwrap();
        let batch = [
            Sample::from_text("q", "Thank you!"),
            Sample::from_text("q", "thanks"),
        ];
        assert_eq!(values(&r, &batch), [1.0, -1.0]);
    }

    #[test]
    fn last_capture_compared_with_reference() {
        let r = RegexMatch::new(RegexMatchConfig {
            pattern: "<answer>(.*?)</answer>".into(),
            reference_key: Some("answer".into()),
            hit: 1.0,
            miss: 0.0,
        })
        .unwrap();
        let batch = [
            Sample::from_text("q", "<answer>B</answer> no wait <answer> C </answer>")
                .with_extra("answer", "C"),
            Sample::from_text("q", "<answer>B</answer>").with_extra("answer", "C"),
            Sample::from_text("q", "C").with_extra("answer", "C"),
        ];
        assert_eq!(values(&r, &batch), [1.0, 0.0, 0.0]);
    }

    #[test]
    fn bad_pattern_is_reported() {
        let err = RegexMatch::new(RegexMatchConfig {
            pattern: "(unclosed".into(),
            reference_key: None,
            hit: 1.0,
            miss: 0.0,
        })
        .err()
        .unwrap();
        assert!(
            format!("{err:#}").contains("invalid pattern \"(unclosed\""),
            "{err:#}"
        );
    }
}
