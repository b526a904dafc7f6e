//! The `[reward]` config section and the factory that builds rewards from it.
//!
//! ```toml
//! [reward]
//! type = "numeric_match"      # or exact_match, regex_match, format, length_penalty,
//! reference_key = "answer"    #    external, model, weighted_sum
//!
//! [reward.shaping]
//! clip = [-1.0, 1.0]
//! ```
//!
//! Every table rejects unknown keys, and errors name the key path (e.g.
//! `reward.components[1].abs_tolerance: invalid type: string "x", expected f64`).
//! The section is read through `serde_json::Value` so the `type` tag, the `shaping` table and
//! a component's `name`/`weight` can sit beside the reward's own options while each options struct
//! still denies unknown keys (serde's `flatten` cannot be combined with `deny_unknown_fields`).

use anyhow::{Context, Result};
use serde::de::{DeserializeOwned, Deserializer, Error as _};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::external::{ExternalConfig, ExternalReward};
use crate::model_reward::{ModelReward, ModelRewardConfig};
use crate::pipeline::RewardPipeline;
use crate::reward_trait::Reward;
use crate::rules::{
    ExactMatch, ExactMatchConfig, FormatCheck, FormatCheckConfig, LengthPenalty,
    LengthPenaltyConfig, NumericMatch, NumericMatchConfig, RegexMatch, RegexMatchConfig,
};
use crate::shaping::ShapingConfig;
use crate::weighted_sum::{Component, WeightedSum};

/// The whole `[reward]` section: what to score with, and how to shape it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RewardConfig {
    #[serde(flatten)]
    pub spec: RewardSpec,
    #[serde(default)]
    pub shaping: ShapingConfig,
}

/// Which reward, with its options. `type` in the config picks the variant.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RewardSpec {
    NumericMatch(NumericMatchConfig),
    ExactMatch(ExactMatchConfig),
    RegexMatch(RegexMatchConfig),
    Format(FormatCheckConfig),
    LengthPenalty(LengthPenaltyConfig),
    External(ExternalConfig),
    Model(ModelRewardConfig),
    WeightedSum(WeightedSumConfig),
}

const TYPES: &str =
    "numeric_match, exact_match, regex_match, format, length_penalty, external, model, weighted_sum";

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WeightedSumConfig {
    pub components: Vec<ComponentConfig>,
}

/// One `[[reward.components]]` entry: a reward spec plus its `weight` (default 1) and `name`
/// (default: its type; used for the sub-score metric `reward/NAME/mean`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ComponentConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub weight: f32,
    #[serde(flatten)]
    pub spec: RewardSpec,
}

impl RewardSpec {
    /// The `type` string of this spec.
    pub fn type_name(&self) -> &'static str {
        match self {
            RewardSpec::NumericMatch(_) => "numeric_match",
            RewardSpec::ExactMatch(_) => "exact_match",
            RewardSpec::RegexMatch(_) => "regex_match",
            RewardSpec::Format(_) => "format",
            RewardSpec::LengthPenalty(_) => "length_penalty",
            RewardSpec::External(_) => "external",
            RewardSpec::Model(_) => "model",
            RewardSpec::WeightedSum(_) => "weighted_sum",
        }
    }
}

impl<'de> Deserialize<'de> for RewardConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        parse_config(value, "reward").map_err(D::Error::custom)
    }
}

fn parse_config(value: Value, at: &str) -> Result<RewardConfig, String> {
    let mut table = into_table(value, at)?;
    let shaping = match table.remove("shaping") {
        Some(v) => typed::<ShapingConfig>(v, &format!("{at}.shaping"))?,
        None => ShapingConfig::default(),
    };
    shaping
        .validate()
        .map_err(|e| format!("{at}.shaping: {e}"))?;
    Ok(RewardConfig {
        spec: parse_spec(table, at)?,
        shaping,
    })
}

fn parse_spec(mut table: Map<String, Value>, at: &str) -> Result<RewardSpec, String> {
    let ty = match table.remove("type") {
        Some(Value::String(t)) => t,
        Some(other) => {
            return Err(format!(
                "{at}.type: expected a string (one of {TYPES}), got {other}"
            ))
        }
        None => return Err(format!("{at}.type is missing; set it to one of {TYPES}")),
    };
    let rest = Value::Object(table);
    Ok(match ty.as_str() {
        "numeric_match" => RewardSpec::NumericMatch(typed(rest, at)?),
        "exact_match" => RewardSpec::ExactMatch(typed(rest, at)?),
        "regex_match" => RewardSpec::RegexMatch(typed(rest, at)?),
        "format" => RewardSpec::Format(typed(rest, at)?),
        "length_penalty" => RewardSpec::LengthPenalty(typed(rest, at)?),
        "external" => RewardSpec::External(typed(rest, at)?),
        "model" => RewardSpec::Model(typed(rest, at)?),
        "weighted_sum" => RewardSpec::WeightedSum(parse_weighted_sum(rest, at)?),
        other => {
            return Err(format!(
                "{at}.type: unknown reward type {other:?}; expected one of {TYPES}"
            ))
        }
    })
}

fn parse_weighted_sum(value: Value, at: &str) -> Result<WeightedSumConfig, String> {
    let mut table = into_table(value, at)?;
    let components = match table.remove("components") {
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(format!(
                "{at}.components: expected an array of tables ([[{at}.components]])"
            ))
        }
        None => {
            return Err(format!(
                "{at}.components is missing; a weighted_sum needs [[{at}.components]] entries"
            ))
        }
    };
    if let Some(key) = table.keys().next() {
        return Err(format!(
            "{at}.{key}: unknown key for weighted_sum (expected `components`)"
        ));
    }
    let components = components
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let at = format!("{at}.components[{i}]");
            let mut table = into_table(item, &at)?;
            let name = match table.remove("name") {
                Some(Value::String(n)) => Some(n),
                Some(other) => return Err(format!("{at}.name: expected a string, got {other}")),
                None => None,
            };
            let weight = match table.remove("weight") {
                Some(v) => typed::<f32>(v, &format!("{at}.weight"))?,
                None => 1.0,
            };
            Ok(ComponentConfig {
                name,
                weight,
                spec: parse_spec(table, &at)?,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(WeightedSumConfig { components })
}

fn into_table(value: Value, at: &str) -> Result<Map<String, Value>, String> {
    match value {
        Value::Object(table) => Ok(table),
        other => Err(format!("{at}: expected a table, got {other}")),
    }
}

/// Deserialises `value` into `T`, prefixing errors with the full key path.
fn typed<T: DeserializeOwned>(value: Value, at: &str) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            format!("{at}: {inner}")
        } else {
            format!("{at}.{path}: {inner}")
        }
    })
}

/// Builds the reward described by `config` (without its shaping; see [`build_pipeline`]).
pub fn build_reward(config: &RewardConfig) -> Result<Box<dyn Reward>> {
    build_spec(&config.spec, "reward")
}

/// Builds the reward and its shaping: what the scheduler calls each step.
pub fn build_pipeline(config: &RewardConfig) -> Result<RewardPipeline> {
    RewardPipeline::new(build_reward(config)?, config.shaping.clone()).context("reward.shaping")
}

fn build_spec(spec: &RewardSpec, at: &str) -> Result<Box<dyn Reward>> {
    let reward: Box<dyn Reward> = match spec {
        RewardSpec::NumericMatch(c) => {
            Box::new(NumericMatch::new(c.clone()).with_context(|| format!("{at} (numeric_match)"))?)
        }
        RewardSpec::ExactMatch(c) => Box::new(ExactMatch::new(c.clone())),
        RewardSpec::RegexMatch(c) => {
            Box::new(RegexMatch::new(c.clone()).with_context(|| format!("{at} (regex_match)"))?)
        }
        RewardSpec::Format(c) => {
            Box::new(FormatCheck::new(c.clone()).with_context(|| format!("{at} (format)"))?)
        }
        RewardSpec::LengthPenalty(c) => Box::new(
            LengthPenalty::new(c.clone()).with_context(|| format!("{at} (length_penalty)"))?,
        ),
        RewardSpec::External(c) => {
            Box::new(ExternalReward::new(c.clone()).with_context(|| format!("{at} (external)"))?)
        }
        RewardSpec::Model(c) => {
            Box::new(ModelReward::load(c).with_context(|| format!("{at} (model)"))?)
        }
        RewardSpec::WeightedSum(w) => {
            let mut components = Vec::with_capacity(w.components.len());
            for (i, c) in w.components.iter().enumerate() {
                let at = format!("{at}.components[{i}]");
                let name = c
                    .name
                    .clone()
                    .unwrap_or_else(|| c.spec.type_name().to_string());
                // A plugin inside a weighted sum is named after its component in errors and logs.
                let spec = match (&c.spec, &c.name) {
                    (RewardSpec::External(e), Some(n)) => RewardSpec::External(ExternalConfig {
                        name: Some(n.clone()),
                        ..e.clone()
                    }),
                    (spec, _) => spec.clone(),
                };
                components.push(Component {
                    name,
                    weight: c.weight,
                    reward: build_spec(&spec, &at)?,
                });
            }
            Box::new(WeightedSum::new(components).with_context(|| format!("{at} (weighted_sum)"))?)
        }
    };
    Ok(reward)
}
