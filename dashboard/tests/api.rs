//! The dashboard's JSON API over real HTTP: live reading of a run still being written, tolerance of
//! malformed lines, and that nothing outside the log directory can be read through it.

mod common;

use common::*;
use serde_json::Value;
use std::io::Write;

fn get_json(addr: std::net::SocketAddr, target: &str) -> (u16, Value) {
    let (status, body) = http_get(addr, target);
    let v = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{target}: body is not JSON ({e}): {body}"));
    (status, v)
}

#[test]
fn lists_runs_and_serves_metrics_skipping_bad_lines_and_following_appends() {
    let fx = write_fixture();
    let (addr, _rt) = start_server(&fx.logdir);

    let (status, runs) = get_json(addr, "/api/runs");
    assert_eq!(status, 200);
    let names: Vec<&str> = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    // The symlink to a folder outside the log directory is not listed.
    assert_eq!(names, [PRIMARY, OVERLAY]);
    let primary = &runs["runs"][0];
    assert_eq!(primary["last_step"], 20);
    assert_eq!(primary["errors"], 1, "the NaN grad norm");
    assert_eq!(primary["warnings"], 1, "the entropy collapse");

    let (status, m) = get_json(addr, &format!("/api/metrics?run={PRIMARY}"));
    assert_eq!(status, 200);
    assert_eq!(m["rows"], 20, "the half-written step 21 is not read yet");
    assert_eq!(m["skipped_lines"], 1, "the line cut short at step 7");
    assert_eq!(m["series"]["reward/mean"][19].as_f64().unwrap(), reward(20));
    assert_eq!(m["series"]["actor/grad_norm"][12], "NaN");

    // The trainer finishes step 21: only the new row comes back when asked from row 20.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(fx.logdir.join(PRIMARY).join("metrics.jsonl"))
        .unwrap();
    writeln!(f, "}}").unwrap();
    let (_, m) = get_json(addr, &format!("/api/metrics?run={PRIMARY}&from=20"));
    assert_eq!(m["rows"], 21);
    assert_eq!(m["steps"], serde_json::json!([21]));
    assert_eq!(m["series"]["reward/mean"], serde_json::json!([0.9]));

    let (_, h) = get_json(addr, &format!("/api/health?run={PRIMARY}"));
    let kinds: Vec<&str> = h["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["non_finite", "entropy_collapse"]);

    let (_, s) = get_json(addr, &format!("/api/samples?run={PRIMARY}"));
    assert_eq!(s["steps"], serde_json::json!([10, 20]));
    assert_eq!(s["step"], 20);
    assert_eq!(s["samples"][1]["prompt"], TRICKY_PROMPT);
    let (_, s) = get_json(addr, &format!("/api/samples?run={PRIMARY}&step=10"));
    assert_eq!(s["samples"][0]["response"], "17 + 10 = 27");

    let (_, t) = get_json(addr, &format!("/api/timeline?run={PRIMARY}&step=19"));
    assert_eq!(t["steps"], serde_json::json!([19, 20]));
    assert_eq!(t["calls"][0]["call"], "actor_gen");
    assert_eq!(
        t["calls"][0]["end_s"].as_f64().unwrap() - t["calls"][0]["start_s"].as_f64().unwrap(),
        1.5
    );

    let (_, c) = get_json(addr, &format!("/api/config?run={PRIMARY}"));
    assert!(c["text"].as_str().unwrap().contains("kl_coef = 0.05"));
    let (_, c) = get_json(
        addr,
        &format!("/api/config?run={}", OVERLAY.replace('/', "%2F")),
    );
    assert_eq!(c["text"], Value::Null, "the overlay run has no config.toml");
}

#[test]
fn nothing_outside_the_log_directory_can_be_read() {
    let fx = write_fixture();
    let (addr, _rt) = start_server(&fx.logdir);
    // (request target, expected status). 400: the name is refused as a path out of the log dir;
    // 404: once decoded it is a literal folder name that does not exist.
    let cases = [
        ("/api/metrics?run=../secret", 400),
        ("/api/metrics?run=..%2Fsecret", 400),
        ("/api/metrics?run=%2e%2e%2fsecret", 400),
        ("/api/metrics?run=%2E%2E/secret", 400),
        ("/api/metrics?run=ppo-demo/../../secret", 400),
        ("/api/metrics?run=%2Ftmp", 400),
        ("/api/metrics?run=..%5Csecret", 400),
        ("/api/config?run=../secret", 400),
        ("/api/samples?run=../secret", 400),
        ("/api/timeline?run=..%2F..%2F..%2Fetc", 400),
        ("/api/metrics?run=link", 400),
        ("/api/config?run=link", 400),
        ("/api/metrics?run=%252e%252e%252fsecret", 404),
        ("/api/metrics?run=..%252Fsecret", 404),
        ("/../secret/metrics.jsonl", 404),
        ("/%2e%2e/secret/config.toml", 404),
        ("/api/../../secret/metrics.jsonl", 404),
    ];
    for (target, want) in cases {
        let (status, body) = http_get(addr, target);
        assert_eq!(status, want, "{target}: {body}");
        assert!(
            !body.contains("SECRET"),
            "{target} leaked the outside run: {body}"
        );
    }
    let (status, body) = http_get(addr, "/api/metrics?run=no-such-run");
    assert_eq!(status, 404);
    assert!(body.contains("no run named \\\"no-such-run\\\""), "{body}");
}

#[test]
fn a_missing_log_directory_is_a_clear_error() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let err = rt
        .block_on(dashboard::server::bind(
            &missing,
            "127.0.0.1:0".parse().unwrap(),
        ))
        .err()
        .expect("binding a missing log directory must fail");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("log directory") && msg.contains("does not exist") && msg.contains("nope"),
        "{msg}"
    );
}
