//! Reading the reference answer out of a sample's dataset row.

use anyhow::{bail, Result};
use serde_json::Value;

use crate::sample::Sample;

/// The reference answers for `sample`: the field `key` of its dataset row, as a list (a JSON
/// array means "any of these is correct").
pub(crate) fn references<'a>(
    sample: &'a Sample,
    key: &str,
    index: usize,
    reward: &str,
) -> Result<Vec<&'a Value>> {
    let Some(value) = sample.extra.get(key) else {
        let have: Vec<&str> = sample.extra.keys().map(String::as_str).collect();
        bail!("reward {reward}: sample {index} has no field '{key}' in its dataset row (fields: {have:?}); set reference_key to the field that holds the reference answer");
    };
    Ok(match value {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    })
}

/// A reference value as text: strings as they are, numbers and booleans in their JSON form.
pub(crate) fn reference_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
