//! metrics.jsonl: one JSON object per training step with `step`, `time` and scalars named as in
//! shared/metrics.md ("reward/mean", "timing_s/gen", ...).

use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// One parsed line of metrics.jsonl.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRecord {
    pub step: u64,
    /// Wall-clock unix seconds, when the writer gave one.
    pub time: Option<f64>,
    /// Scalars by name. Non-finite values (NaN, ±inf) are kept: the health check reports them.
    pub scalars: BTreeMap<String, f64>,
}

/// Reads one metrics object. Returns None when it has no usable `step` (the line is then counted
/// as skipped). Nested objects are flattened with '/', so {"reward": {"mean": 1}} is "reward/mean".
pub fn parse_step_record(obj: Map<String, Value>) -> Option<StepRecord> {
    let step = match obj.get("step")? {
        Value::Number(n) => n.as_u64().or_else(|| {
            let f = n.as_f64()?;
            (f >= 0.0 && f.fract() == 0.0).then_some(f as u64)
        })?,
        _ => return None,
    };
    let time = obj.get("time").and_then(Value::as_f64);
    let mut scalars = BTreeMap::new();
    for (key, value) in &obj {
        if key == "step" || key == "time" {
            continue;
        }
        flatten_into(key, value, &mut scalars);
    }
    Some(StepRecord {
        step,
        time,
        scalars,
    })
}

fn flatten_into(name: &str, value: &Value, out: &mut BTreeMap<String, f64>) {
    match value {
        Value::Object(m) => {
            for (k, v) in m {
                flatten_into(&format!("{name}/{k}"), v, out);
            }
        }
        other => {
            if let Some(x) = scalar_value(other) {
                out.insert(name.to_string(), x);
            }
        }
    }
}

/// The number a JSON value stands for in a metrics file.
///
/// `null` is NaN: serde_json (what the scheduler writes with) serialises a non-finite f64 as null,
/// and a metric the writer had no value for is simply left out of the line. Strings "NaN", "inf",
/// "Infinity" (any case, optional sign) are what Python loggers write. Booleans and other strings
/// are not scalars.
pub fn scalar_value(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::Null => Some(f64::NAN),
        Value::String(s) => {
            let t = s.trim().to_ascii_lowercase();
            let (sign, body) = match t.strip_prefix('-') {
                Some(b) => (-1.0, b),
                None => (1.0, t.strip_prefix('+').unwrap_or(&t)),
            };
            match body {
                "nan" => Some(f64::NAN),
                "inf" | "infinity" => Some(sign * f64::INFINITY),
                _ => None,
            }
        }
        _ => None,
    }
}

/// A scalar's values over the steps that logged it, in file order.
pub fn series<'a>(
    records: &'a [StepRecord],
    name: &'a str,
) -> impl Iterator<Item = (u64, f64)> + 'a {
    records
        .iter()
        .filter_map(move |r| r.scalars.get(name).map(|&v| (r.step, v)))
}

/// Every scalar name that appears in any record, sorted.
pub fn scalar_names(records: &[StepRecord]) -> Vec<String> {
    let mut names: Vec<String> = records
        .iter()
        .flat_map(|r| r.scalars.keys().cloned())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// A float as JSON for the page: finite numbers as numbers, non-finite as the strings "NaN",
/// "inf", "-inf" (JSON has no literal for them, and null would read as "missing").
pub fn to_json_number(x: f64) -> Value {
    if x.is_finite() {
        serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
    } else if x.is_nan() {
        Value::from("NaN")
    } else if x > 0.0 {
        Value::from("inf")
    } else {
        Value::from("-inf")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jsonl::parse_object;

    fn rec(line: &str) -> Option<StepRecord> {
        parse_step_record(parse_object(line)?)
    }

    #[test]
    fn parses_scalars_nested_objects_and_non_finite_values() {
        let r = rec(r#"{"step": 7, "time": 1700000000.5, "reward/mean": 0.25, "kl": {"mean": 0.01},
                      "actor/grad_norm": null, "x": "-Infinity", "y": NaN, "note": "hi", "flag": true}"#)
        .unwrap();
        assert_eq!(r.step, 7);
        assert_eq!(r.time, Some(1700000000.5));
        assert_eq!(r.scalars["reward/mean"], 0.25);
        assert_eq!(r.scalars["kl/mean"], 0.01);
        assert!(r.scalars["actor/grad_norm"].is_nan());
        assert_eq!(r.scalars["x"], f64::NEG_INFINITY);
        assert!(r.scalars["y"].is_nan());
        assert!(!r.scalars.contains_key("note"));
        assert!(!r.scalars.contains_key("flag"));
    }

    #[test]
    fn a_line_without_a_valid_step_is_rejected() {
        assert!(rec(r#"{"reward/mean": 1}"#).is_none());
        assert!(rec(r#"{"step": "3"}"#).is_none());
        assert!(rec(r#"{"step": -1}"#).is_none());
        assert_eq!(rec(r#"{"step": 4.0}"#).unwrap().step, 4);
    }

    #[test]
    fn non_finite_values_round_trip_to_page_json_as_strings() {
        assert_eq!(to_json_number(1.5), Value::from(1.5));
        assert_eq!(to_json_number(f64::NAN), Value::from("NaN"));
        assert_eq!(to_json_number(f64::INFINITY), Value::from("inf"));
        assert_eq!(to_json_number(f64::NEG_INFINITY), Value::from("-inf"));
    }
}
