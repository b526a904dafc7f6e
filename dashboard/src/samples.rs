//! samples/step_N.jsonl: the rollouts of one step, one line per sample.

use crate::jsonl::JsonlTail;
use crate::metrics::scalar_value;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub prompt: String,
    pub response: String,
    /// The shaped reward; None if the line had none. Non-finite values are kept.
    pub reward: Option<f64>,
    /// Named sub-rewards, when the reward reports them.
    pub sub_rewards: BTreeMap<String, f64>,
}

/// Reads one sample object; lines without a prompt or a response are rejected (and counted).
pub fn parse_sample(obj: Map<String, Value>) -> Option<Sample> {
    let text = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_string);
    let sub_rewards = match obj.get("sub_rewards") {
        Some(Value::Object(m)) => m
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), scalar_value(v)?)))
            .collect(),
        _ => BTreeMap::new(),
    };
    Some(Sample {
        prompt: text("prompt")?,
        response: text("response")?,
        reward: obj.get("reward").and_then(scalar_value),
        sub_rewards,
    })
}

/// All samples of one step file, skipping malformed lines. Returns (samples, lines skipped).
pub fn read_samples(path: &Path) -> std::io::Result<(Vec<Sample>, usize)> {
    let mut tail = JsonlTail::new(path);
    tail.refresh(parse_sample)?;
    Ok((tail.records, tail.skipped_lines))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jsonl::parse_object;

    #[test]
    fn sample_lines_need_prompt_and_response() {
        let s = parse_sample(
            parse_object(r#"{"prompt":"2+2?","response":"4","reward":1.0,"sub_rewards":{"format":0.5,"x":"n/a"}}"#)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(s.prompt, "2+2?");
        assert_eq!(s.reward, Some(1.0));
        assert_eq!(s.sub_rewards, BTreeMap::from([("format".to_string(), 0.5)]));
        assert!(parse_sample(parse_object(r#"{"prompt":"p"}"#).unwrap()).is_none());
        let s = parse_sample(parse_object(r#"{"prompt":"p","response":"r"}"#).unwrap()).unwrap();
        assert_eq!(s.reward, None);
    }
}
