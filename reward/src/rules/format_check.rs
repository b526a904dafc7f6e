//! Format checks: does the response follow the required layout (think/answer tags, a boxed
//! answer, a GSM8K "#### N" line, or any user pattern matching the whole response)?

use anyhow::{bail, Context, Result};
use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::reward_trait::SyncReward;
use crate::sample::{FinishReason, Sample, Score};

/// Ready-made formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FormatPreset {
    /// `<think>...</think>` then `<answer>...</answer>`, nothing else around them, each tag once.
    ThinkAnswer,
    /// Contains a `\boxed{...}`.
    Boxed,
    /// Ends with a GSM8K-style `#### <number>` line.
    HashAnswer,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FormatCheckConfig {
    /// A ready-made format; give exactly one of `preset` and `pattern`.
    #[serde(default)]
    pub preset: Option<FormatPreset>,
    /// A regex the WHOLE response must match (anchored for you; `.` also matches newlines).
    #[serde(default)]
    pub pattern: Option<String>,
    /// Also require that generation stopped by itself (a truncated response fails the format).
    #[serde(default)]
    pub require_stop: bool,
    #[serde(default = "super::default_hit")]
    pub hit: f32,
    #[serde(default)]
    pub miss: f32,
}

pub struct FormatCheck {
    config: FormatCheckConfig,
    regex: Regex,
    /// Literals that must appear exactly once (the think/answer tags).
    once: &'static [&'static str],
}

impl FormatCheck {
    pub fn new(config: FormatCheckConfig) -> Result<Self> {
        let (pattern, once): (String, &'static [&'static str]) =
            match (&config.preset, &config.pattern) {
                (Some(FormatPreset::ThinkAnswer), None) => (
                    r"\s*<think>.*</think>\s*<answer>.*</answer>\s*".into(),
                    &["<think>", "</think>", "<answer>", "</answer>"],
                ),
                (Some(FormatPreset::Boxed), None) => (r".*\\boxed\{.*\}.*".into(), &[]),
                (Some(FormatPreset::HashAnswer), None) => {
                    (r".*\n?####\s*-?[0-9][0-9,]*(\.[0-9]+)?\s*".into(), &[])
                }
                (None, Some(p)) => (p.clone(), &[]),
                (Some(_), Some(_)) => bail!("format: give either `preset` or `pattern`, not both"),
                (None, None) => {
                    bail!("format: give `preset` (think_answer, boxed, hash_answer) or `pattern`")
                }
            };
        // Anchor the whole response; (?s) lets `.` cross newlines.
        let anchored = format!("(?s)^(?:{pattern})$");
        let regex = Regex::new(&anchored)
            .with_context(|| format!("format: invalid pattern {pattern:?}"))?;
        Ok(FormatCheck {
            config,
            regex,
            once,
        })
    }

    fn passes(&self, sample: &Sample) -> bool {
        if self.config.require_stop && sample.finish_reason != FinishReason::Stop {
            return false;
        }
        self.regex.is_match(&sample.response)
            && self
                .once
                .iter()
                .all(|tag| sample.response.matches(tag).count() == 1)
    }
}

impl SyncReward for FormatCheck {
    fn reward_name(&self) -> &str {
        "format"
    }

    fn score_sync(&self, samples: &[Sample]) -> Result<Vec<Score>> {
        Ok(samples
            .iter()
            .map(|s| {
                Score::new(if self.passes(s) {
                    self.config.hit
                } else {
                    self.config.miss
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(config: FormatCheckConfig, responses: &[&str]) -> Vec<f32> {
        let batch: Vec<Sample> = responses
            .iter()
            .map(|r| Sample::from_text("q", r))
            .collect();
        FormatCheck::new(config)
            .unwrap()
            .score_sync(&batch)
            .unwrap()
            .iter()
            .map(|s| s.value)
            .collect()
    }

    fn preset(p: FormatPreset) -> FormatCheckConfig {
        FormatCheckConfig {
            preset: Some(p),
            pattern: None,
            require_stop: false,
            hit: 1.0,
            miss: 0.0,
        }
    }

    #[test]
    fn think_answer_preset() {
        let got = check(
            preset(FormatPreset::ThinkAnswer),
            &[
                "<think>\n2+2\n</think>\n<answer>4</answer>\n",
                "<answer>4</answer>",
                "<think>a</think><answer>4</answer> trailing words",
                "<think>a</think><answer>4</answer><answer>5</answer>",
            ],
        );
        assert_eq!(got, [1.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn boxed_and_hash_presets() {
        assert_eq!(
            check(preset(FormatPreset::Boxed), &["so \\boxed{4}.", "so 4"]),
            [1.0, 0.0]
        );
        assert_eq!(
            check(
                preset(FormatPreset::HashAnswer),
                &["2+2=4\n#### 4", "#### 1,000\n", "4 ####"]
            ),
            [1.0, 1.0, 0.0]
        );
    }

    #[test]
    fn custom_pattern_is_anchored_and_truncation_can_fail() {
        let cfg = FormatCheckConfig {
            preset: None,
            pattern: Some("Answer: [A-D]".into()),
            require_stop: true,
            hit: 1.0,
            miss: -1.0,
        };
        let r = FormatCheck::new(cfg).unwrap();
        let batch = [
            Sample::from_text("q", "Answer: B"),
            Sample::from_text("q", "I think Answer: B"),
            Sample::from_text("q", "Answer: B").with_finish_reason(FinishReason::Length),
        ];
        let got: Vec<f32> = r
            .score_sync(&batch)
            .unwrap()
            .iter()
            .map(|s| s.value)
            .collect();
        assert_eq!(got, [1.0, -1.0, -1.0]);
    }

    #[test]
    fn preset_and_pattern_are_exclusive() {
        let cfg = FormatCheckConfig {
            pattern: Some("x".into()),
            ..preset(FormatPreset::Boxed)
        };
        assert!(format!("{:#}", FormatCheck::new(cfg).err().unwrap()).contains("not both"));
    }
}
