//! timeline.jsonl: one line per dataflow call (actor_gen, reward_inf, ref_inf, critic_inf,
//! actor_train, critic_train, reshard, ...) with its start and end in seconds since the run started.

use serde_json::{Map, Value};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub step: u64,
    pub call: String,
    pub start_s: f64,
    pub end_s: f64,
    /// Any other numeric fields the scheduler adds (tokens, peak memory, bytes moved), shown as-is.
    pub extra: BTreeMap<String, f64>,
}

/// Reads one timeline object; a line without step, call, and finite start_s <= end_s is rejected.
pub fn parse_call(obj: Map<String, Value>) -> Option<Call> {
    let num = |k: &str| obj.get(k).and_then(Value::as_f64).filter(|x| x.is_finite());
    let call = Call {
        step: obj.get("step")?.as_u64()?,
        call: obj.get("call")?.as_str()?.to_string(),
        start_s: num("start_s")?,
        end_s: num("end_s")?,
        extra: obj
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "step" | "call" | "start_s" | "end_s"))
            .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
            .collect(),
    };
    (call.end_s >= call.start_s).then_some(call)
}

/// The order calls are drawn in, top to bottom: the order one PPO iteration runs them in.
pub const CALL_ORDER: [&str; 7] = [
    "actor_gen",
    "reward_inf",
    "ref_inf",
    "critic_inf",
    "actor_train",
    "critic_train",
    "reshard",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jsonl::parse_object;

    #[test]
    fn calls_need_step_name_and_ordered_times() {
        let c = parse_call(
            parse_object(
                r#"{"step":3,"call":"actor_gen","start_s":10.0,"end_s":12.5,"tokens":4096}"#,
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            (c.step, c.call.as_str(), c.start_s, c.end_s),
            (3, "actor_gen", 10.0, 12.5)
        );
        assert_eq!(c.extra["tokens"], 4096.0);
        assert!(parse_call(
            parse_object(r#"{"step":3,"call":"x","start_s":2,"end_s":1}"#).unwrap()
        )
        .is_none());
        assert!(parse_call(parse_object(r#"{"step":3,"start_s":1,"end_s":2}"#).unwrap()).is_none());
    }
}
