//! The plugin wire protocol, version 1: one JSON request line per batch on the plugin's stdin,
//! one JSON response line on its stdout.
//!
//! Request:  {"version": 1, "batch_id": 7, "samples": [Sample, ...]}
//! Response: {"version": 1, "batch_id": 7, "scores": [0.5, ...], "sub_scores": {"fmt": [1, ...]}}
//!       or: {"version": 1, "batch_id": 7, "error": "why this batch cannot be scored"}

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::sample::{Sample, Score};

pub const PROTOCOL_VERSION: u32 = 1;

#[derive(Serialize)]
pub(crate) struct Request<'a> {
    pub version: u32,
    pub batch_id: u64,
    pub samples: &'a [Sample],
}

/// Unknown fields are ignored so plugins may add their own (e.g. timing) without breaking.
#[derive(Deserialize)]
struct RawResponse {
    version: serde_json::Value,
    #[serde(default)]
    batch_id: Option<u64>,
    #[serde(default)]
    scores: Option<Vec<f64>>,
    #[serde(default)]
    sub_scores: BTreeMap<String, Vec<f64>>,
    #[serde(default)]
    error: Option<String>,
}

/// Why a response line was not accepted.
#[derive(Debug, PartialEq)]
pub(crate) enum Rejection {
    /// Not a valid version-1 response line.
    Malformed(String),
    /// Valid, but the wrong number of values.
    WrongCount {
        what: String,
        got: usize,
        want: usize,
    },
    /// The plugin answered with `"error"`.
    Reported(String),
}

/// Parses one response line for the batch `batch_id` of `n` samples.
pub(crate) fn parse_response(line: &str, batch_id: u64, n: usize) -> Result<Vec<Score>, Rejection> {
    let mut de = serde_json::Deserializer::from_str(line);
    let raw: RawResponse = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            Rejection::Malformed(format!("not a version-1 response object: {inner}"))
        } else {
            Rejection::Malformed(format!("bad field `{path}`: {inner}"))
        }
    })?;
    de.end()
        .map_err(|e| Rejection::Malformed(format!("extra text after the JSON object: {e}")))?;
    if raw.version != serde_json::json!(PROTOCOL_VERSION) {
        return Err(Rejection::Malformed(format!(
            "expected \"version\": {PROTOCOL_VERSION}, got {}",
            raw.version
        )));
    }
    if let Some(id) = raw.batch_id {
        if id != batch_id {
            return Err(Rejection::Malformed(format!(
                "answers batch_id {id} but batch_id {batch_id} was sent"
            )));
        }
    }
    if let Some(message) = raw.error {
        return Err(Rejection::Reported(message));
    }
    let Some(scores) = raw.scores else {
        return Err(Rejection::Malformed(
            "has neither \"scores\" nor \"error\"".into(),
        ));
    };
    if scores.len() != n {
        return Err(Rejection::WrongCount {
            what: "scores".into(),
            got: scores.len(),
            want: n,
        });
    }
    for (name, values) in &raw.sub_scores {
        if values.len() != n {
            return Err(Rejection::WrongCount {
                what: format!("values for sub-score '{name}'"),
                got: values.len(),
                want: n,
            });
        }
    }
    Ok((0..n)
        .map(|i| Score {
            value: scores[i] as f32,
            sub_scores: raw
                .sub_scores
                .iter()
                .map(|(name, v)| (name.clone(), v[i] as f32))
                .collect(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_scores_and_sub_scores() {
        let got = parse_response(
            r#"{"version":1,"batch_id":3,"scores":[1,0.5],"sub_scores":{"fmt":[1,0]},"took_ms":4}"#,
            3,
            2,
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                Score::new(1.0).with_sub("fmt", 1.0),
                Score::new(0.5).with_sub("fmt", 0.0)
            ]
        );
        // batch_id is optional in responses.
        assert_eq!(
            parse_response(r#"{"version":1,"scores":[2]}"#, 9, 1).unwrap(),
            vec![Score::new(2.0)]
        );
    }

    #[test]
    fn rejects_bad_lines_with_reasons() {
        let malformed = |line: &str| match parse_response(line, 1, 2) {
            Err(Rejection::Malformed(why)) => why,
            other => panic!("{line}: expected Malformed, got {other:?}"),
        };
        assert!(malformed("hello").starts_with("not a version-1 response object"));
        assert!(malformed(r#"{"scores":[1,2]}"#).contains("version"));
        assert!(
            malformed(r#"{"version":2,"scores":[1,2]}"#).contains("expected \"version\": 1, got 2")
        );
        assert!(malformed(r#"{"version":1,"batch_id":0,"scores":[1,2]}"#)
            .contains("answers batch_id 0"));
        assert!(malformed(r#"{"version":1,"scores":[1,null]}"#).contains("bad field `scores[1]`"));
        assert!(malformed(r#"{"version":1}"#).contains("neither"));
        assert!(malformed(r#"{"version":1,"scores":[1,2]} {}"#).contains("extra text"));
    }

    #[test]
    fn counts_and_reported_errors() {
        assert_eq!(
            parse_response(r#"{"version":1,"scores":[1]}"#, 1, 2),
            Err(Rejection::WrongCount {
                what: "scores".into(),
                got: 1,
                want: 2
            })
        );
        assert!(matches!(
            parse_response(
                r#"{"version":1,"scores":[1,2],"sub_scores":{"a":[1]}}"#,
                1,
                2
            ),
            Err(Rejection::WrongCount { got: 1, .. })
        ));
        assert_eq!(
            parse_response(r#"{"version":1,"error":"no answer key"}"#, 1, 2),
            Err(Rejection::Reported("no answer key".into()))
        );
    }
}
