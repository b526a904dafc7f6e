//! A log directory with two small runs, written the way the scheduler writes run folders
//! (docs/run-folder.md), plus the awkward cases a live run produces. Deterministic: the values are
//! closed-form functions of the step.
#![allow(dead_code)] // each test file uses a different part

use std::fmt::Write as _;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub const STEPS: u64 = 20;
/// The primary run's reward/mean at step `s`; 0.875 at the last step.
pub fn reward(s: u64) -> f64 {
    0.175 + 0.035 * s as f64
}
pub const PRIMARY: &str = "ppo-demo";
pub const OVERLAY: &str = "sweep/grpo-demo";
/// A prompt with HTML in it: the page must show it as text.
pub const TRICKY_PROMPT: &str = "Is <b>2 & 2</b> four?";

pub struct Fixture {
    /// Holds everything; `logdir` is inside it, and so is a run outside the log directory.
    pub _tmp: tempfile::TempDir,
    pub logdir: PathBuf,
}

pub fn write_fixture() -> Fixture {
    let tmp = tempfile::tempdir().expect("temp dir");
    let logdir = tmp.path().join("runs");
    write_primary(&logdir.join(PRIMARY));
    write_overlay(&logdir.join(OVERLAY));
    // A run outside the log directory that no request may reach, and a symlink pointing at it.
    let secret = tmp.path().join("secret");
    fs::create_dir_all(&secret).unwrap();
    fs::write(
        secret.join("metrics.jsonl"),
        "{\"step\": 1, \"SECRET/value\": 1}\n",
    )
    .unwrap();
    fs::write(secret.join("config.toml"), "SECRET = true\n").unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(&secret, logdir.join("link")).unwrap();
    Fixture { _tmp: tmp, logdir }
}

fn write_primary(dir: &Path) {
    fs::create_dir_all(dir.join("samples")).unwrap();
    fs::create_dir_all(dir.join("checkpoints")).unwrap();
    fs::create_dir_all(dir.join("tb")).unwrap();
    fs::write(
        dir.join("config.toml"),
        "# resolved by realign\n[algorithm]\nname = \"ppo\"\nkl_coef = 0.05\n\n[rollout]\nmax_new_tokens = 256\n",
    )
    .unwrap();
    let mut m = String::new();
    for s in 1..=STEPS {
        let sf = s as f64;
        // actor/grad_norm is NaN at step 13, written as Python's json.dumps writes it.
        let grad_norm = if s == 13 {
            "NaN".to_string()
        } else {
            format!("{:.4}", 1.0 + 0.01 * sf)
        };
        writeln!(
            m,
            "{{\"step\": {s}, \"time\": {}, \"reward/mean\": {:.6}, \"reward/std\": 0.2, \"kl/mean\": {:.6}, \
             \"actor/entropy\": {:.6}, \"actor/pg_loss\": {:.6}, \"actor/pg_clipfrac\": 0.05, \
             \"actor/grad_norm\": {grad_norm}, \"critic/vf_loss\": {:.6}, \"response_length/mean\": {:.1}, \
             \"timing_s/gen\": 1.5, \"timing_s/update_actor\": 2.25, \"perf/gen_tokens_per_s\": {:.1}}}",
            1_700_000_000 + 10 * s,
            reward(s),
            0.002 * sf,
            1.6 * 0.85f64.powi(s as i32),
            -0.1 + 0.004 * sf,
            0.5 / sf,
            100.0 + 3.0 * sf,
            4000.0 + 10.0 * sf,
        )
        .unwrap();
        if s == 7 {
            // A line cut short by a crash, then a stray line: both skipped.
            m.push_str("{\"step\": 7, \"reward/me\n");
        }
    }
    // The run is still writing step 21.
    m.push_str("{\"step\": 21, \"reward/mean\": 0.9");
    fs::write(dir.join("metrics.jsonl"), m).unwrap();

    for step in [10u64, 20] {
        let mut s = String::new();
        let rows = [
            (
                format!("What is 17 + {step}?"),
                format!("17 + {step} = {}", 17 + step),
                1.0,
                1.0,
            ),
            (
                TRICKY_PROMPT.to_string(),
                "Yes, 2 & 2 make 4.".to_string(),
                0.5,
                0.0,
            ),
            (
                "Name a prime above 90.".to_string(),
                "91".to_string(),
                -0.25,
                1.0,
            ),
        ];
        for (prompt, response, reward, format_ok) in rows {
            let line = serde_json::json!({
                "prompt": prompt, "response": response, "reward": reward,
                "sub_rewards": { "correct": reward, "format": format_ok },
            });
            writeln!(s, "{line}").unwrap();
        }
        fs::write(dir.join("samples").join(format!("step_{step}.jsonl")), s).unwrap();
    }

    let mut t = String::new();
    for step in [19u64, 20] {
        let base = 10.0 * step as f64;
        let calls = [
            ("actor_gen", 0.0, 1.5),
            ("reward_inf", 1.5, 1.75),
            ("ref_inf", 1.75, 2.0),
            ("critic_inf", 1.75, 2.0),
            ("actor_train", 2.0, 4.25),
            ("critic_train", 4.25, 5.0),
            ("reshard", 5.0, 5.125),
        ];
        for (call, a, b) in calls {
            writeln!(
                t,
                "{{\"step\": {step}, \"call\": \"{call}\", \"start_s\": {}, \"end_s\": {}}}",
                base + a,
                base + b
            )
            .unwrap();
        }
    }
    fs::write(dir.join("timeline.jsonl"), t).unwrap();
}

fn write_overlay(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    let mut m = String::new();
    for s in 1..=STEPS {
        writeln!(
            m,
            "{{\"step\": {s}, \"reward/mean\": {:.6}, \"kl/mean\": 0.01}}",
            0.1 + 0.02 * s as f64
        )
        .unwrap();
    }
    fs::write(dir.join("metrics.jsonl"), m).unwrap();
}

/// Starts the dashboard on 127.0.0.1 with a free port on a background runtime.
pub fn start_server(logdir: &Path) -> (SocketAddr, tokio::runtime::Runtime) {
    start_app(dashboard::server::app(logdir).expect("dashboard routes"))
}

/// Serves `router` (the dashboard's, perhaps with a test layer) like [`start_server`].
pub fn start_app(router: axum::Router) -> (SocketAddr, tokio::runtime::Runtime) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let bound = rt
        .block_on(dashboard::server::bind_app(
            router,
            "127.0.0.1:0".parse().unwrap(),
        ))
        .expect("bind the dashboard");
    let addr = bound.local_addr().unwrap();
    rt.spawn(bound.serve(std::future::pending()));
    (addr, rt)
}

/// A plain HTTP/1.1 GET, written by hand so the request target reaches the server exactly as
/// given (no client-side normalisation of "..") . Returns (status, body).
pub fn http_get(addr: SocketAddr, target: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {raw:?}"));
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
