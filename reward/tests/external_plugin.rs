//! The external-process reward against real plugin processes: the shipped Python example, and
//! misbehaving plugins written into a temp dir (hang, crash once, crash always, garbage, wrong
//! count). Each must end in scores or a clear error naming the plugin, never a hang.

use std::path::{Path, PathBuf};

use reward::{ExternalConfig, ExternalReward, PluginError, Reward, Sample, Score};

fn example_plugin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/reward_plugin.py")
}

/// Writes a Python plugin whose per-request logic is `body` (with `req`, `n` and `DIR` defined).
fn python_plugin(dir: &Path, file: &str, body: &str) -> ExternalConfig {
    let path = dir.join(file);
    let script = format!(
        "import json, os, sys, time\nDIR = {dir:?}\nwith open(os.path.join(DIR, 'starts'), 'a') as f: f.write('x')\nfor line in sys.stdin:\n    req = json.loads(line)\n    n = len(req['samples'])\n{}\n",
        body.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n"),
    );
    std::fs::write(&path, script).unwrap();
    let mut config = ExternalConfig::new(&["python3", path.to_str().unwrap()]);
    config.timeout_s = 20.0;
    config
}

/// A well-behaved answer line, used after the misbehaviour under test.
const ANSWER: &str = "print(json.dumps({'version': 1, 'batch_id': req['batch_id'], 'scores': [float(i) for i in range(n)]}), flush=True)";

fn starts(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("starts")).map_or(0, |s| s.len())
}

fn batch(n: usize) -> Vec<Sample> {
    (0..n)
        .map(|i| Sample::from_text("q", &format!("answer {i}")).with_extra("answer", i))
        .collect()
}

async fn plugin_error(reward: &ExternalReward, samples: &[Sample]) -> PluginError {
    let err = reward
        .score(samples)
        .await
        .expect_err("the plugin should fail this batch");
    match err.downcast::<PluginError>() {
        Ok(e) => e,
        Err(other) => panic!("expected a PluginError, got: {other:#}"),
    }
}

#[tokio::test]
async fn example_plugin_scores_batches() {
    let mut config = ExternalConfig::new(&["python3", example_plugin().to_str().unwrap()]);
    config.batch_size = Some(2); // 3 samples -> two request lines
    let reward = ExternalReward::new(config).unwrap();
    assert!(reward.name().ends_with("examples/reward_plugin.py"));
    let samples = vec![
        Sample::from_text("What is 1000 + 234?", "1000 + 234 = 1,234\n#### 1,234")
            .with_extra("answer", "1234"),
        Sample::from_text("What is 3 + 4?", "It is 7.").with_extra("answer", 7),
        Sample::from_text("What is 2 - 5?", "#### 3").with_extra("answer", "-3"),
    ];
    let scores = reward.score(&samples).await.unwrap();
    let sub = |c: f32, f: f32| {
        Score::new(c + 0.1 * f)
            .with_sub("correct", c)
            .with_sub("formatted", f)
    };
    assert_eq!(scores, vec![sub(1.0, 1.0), sub(1.0, 0.0), sub(0.0, 1.0)]);
    // The same process serves the next batch.
    let again = reward.score(&samples[1..2]).await.unwrap();
    assert_eq!(again, vec![sub(1.0, 0.0)]);
    assert!(reward.score(&[]).await.unwrap().is_empty());
}

#[tokio::test]
async fn example_plugin_reports_missing_reference() {
    let reward = ExternalReward::new(ExternalConfig::new(&[
        "python3",
        example_plugin().to_str().unwrap(),
    ]))
    .unwrap();
    match plugin_error(&reward, &[Sample::from_text("q", "#### 1")]).await {
        PluginError::Reported { message, .. } => {
            assert!(message.contains("no 'answer' field"), "{message}")
        }
        other => panic!("expected Reported, got {other}"),
    }
}

#[tokio::test]
async fn hanging_plugin_hits_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = python_plugin(dir.path(), "hang.py", "time.sleep(3600)");
    config.timeout_s = 0.5;
    let reward = ExternalReward::new(config).unwrap();
    let err = plugin_error(&reward, &batch(4)).await;
    assert!(
        matches!(err, PluginError::Timeout { samples: 4, .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("hang.py") && msg.contains("within 0.5 s"),
        "{msg}"
    );
}

#[tokio::test]
async fn plugin_is_restarted_after_a_timeout() {
    let dir = tempfile::tempdir().unwrap();
    // Hangs on the first batch (batch_id 0) and answers later ones: the second batch is only
    // answered if the hung process was killed and a fresh one started.
    let body = format!("if req['batch_id'] == 0:\n    time.sleep(3600)\n{ANSWER}");
    let mut config = python_plugin(dir.path(), "hang_first.py", &body);
    config.timeout_s = 3.0;
    let reward = ExternalReward::new(config).unwrap();
    assert!(matches!(
        plugin_error(&reward, &batch(2)).await,
        PluginError::Timeout { .. }
    ));
    let scores = reward.score(&batch(2)).await.unwrap();
    assert_eq!(scores, vec![Score::new(0.0), Score::new(1.0)]);
}

#[tokio::test]
async fn crashing_plugin_is_restarted_and_the_batch_resent() {
    let dir = tempfile::tempdir().unwrap();
    // The first process dies on its first request; the restarted one answers it.
    let body =
        format!("if open(os.path.join(DIR, 'starts')).read() == 'x':\n    sys.exit(1)\n{ANSWER}");
    let reward = ExternalReward::new(python_plugin(dir.path(), "crash_once.py", &body)).unwrap();
    let scores = reward.score(&batch(3)).await.unwrap();
    assert_eq!(
        scores.iter().map(|s| s.value).collect::<Vec<_>>(),
        [0.0, 1.0, 2.0]
    );
    assert_eq!(starts(dir.path()), 2);
}

#[tokio::test]
async fn always_crashing_plugin_fails_after_bounded_retries() {
    let dir = tempfile::tempdir().unwrap();
    let body =
        "print('boom: cannot load the judge model', file=sys.stderr, flush=True)\nsys.exit(3)";
    let mut config = python_plugin(dir.path(), "crash.py", body);
    config.max_restarts = 2;
    let reward = ExternalReward::new(config).unwrap();
    let err = plugin_error(&reward, &batch(2)).await;
    let msg = err.to_string();
    match err {
        PluginError::Crashed {
            attempts,
            status,
            stderr,
            plugin,
        } => {
            assert_eq!(attempts, 3);
            assert_eq!(status, "exit code 3");
            assert!(
                stderr.contains("boom: cannot load the judge model"),
                "{stderr}"
            );
            assert!(plugin.ends_with("crash.py"));
        }
        other => panic!("expected Crashed, got {other}"),
    }
    assert!(
        msg.contains("crash.py") && msg.contains("3 times in a row"),
        "{msg}"
    );
    // One first start plus max_restarts restarts, then it stops trying.
    assert_eq!(starts(dir.path()), 3);
}

#[tokio::test]
async fn garbage_output_is_rejected_naming_the_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = python_plugin(
        dir.path(),
        "garbage.py",
        "print('Loading weights... done', flush=True)",
    );
    config.name = Some("my-judge".into());
    let reward = ExternalReward::new(config).unwrap();
    let err = plugin_error(&reward, &batch(2)).await;
    let msg = err.to_string();
    assert!(matches!(err, PluginError::Malformed { .. }), "{msg}");
    assert!(
        msg.starts_with("reward plugin 'my-judge' printed a malformed response line"),
        "{msg}"
    );
    assert!(msg.contains("\"Loading weights... done\""), "{msg}");
}

#[tokio::test]
async fn non_utf8_output_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let config = python_plugin(
        dir.path(),
        "binary.py",
        "sys.stdout.buffer.write(b'\\xff\\xfe\\n'); sys.stdout.flush()",
    );
    let reward = ExternalReward::new(config).unwrap();
    let err = plugin_error(&reward, &batch(1)).await;
    assert!(
        matches!(&err, PluginError::Malformed { reason, .. } if reason.contains("not UTF-8")),
        "{err}"
    );
}

#[tokio::test]
async fn wrong_number_of_scores_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let body = "print(json.dumps({'version': 1, 'scores': [1.0]}), flush=True)";
    let reward = ExternalReward::new(python_plugin(dir.path(), "short.py", body)).unwrap();
    let err = plugin_error(&reward, &batch(3)).await;
    assert!(
        matches!(
            err,
            PluginError::WrongCount {
                got: 1,
                want: 3,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("returned 1 scores for a batch of 3 samples"),
        "{err}"
    );
}

#[tokio::test]
async fn missing_program_is_a_spawn_error() {
    let reward =
        ExternalReward::new(ExternalConfig::new(&["/nonexistent/realign-plugin"])).unwrap();
    let err = plugin_error(&reward, &batch(1)).await;
    assert!(matches!(err, PluginError::Spawn { .. }));
    assert!(
        err.to_string()
            .starts_with("could not start reward plugin '/nonexistent/realign-plugin'"),
        "{err}"
    );
}

#[tokio::test]
async fn abandoned_batch_restarts_the_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let body = format!("if req['batch_id'] == 0:\n    time.sleep(3600)\n{ANSWER}");
    let reward = ExternalReward::new(python_plugin(dir.path(), "slow_first.py", &body)).unwrap();
    // The caller gives up (drops the future) while batch 0 is outstanding.
    let abandoned = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        reward.score(&batch(2)),
    )
    .await;
    assert!(abandoned.is_err());
    // The next batch must not go to the busy process (it would time out there): a fresh process
    // serves it.
    let scores = reward.score(&batch(2)).await.unwrap();
    assert_eq!(scores, vec![Score::new(0.0), Score::new(1.0)]);
}

/// Collects formatted log output in memory.
#[derive(Clone, Default)]
struct LogBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn plugin_stderr_is_forwarded_to_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let body =
        format!("print('judge: scored', n, 'samples', file=sys.stderr, flush=True)\n{ANSWER}");
    let mut config = python_plugin(dir.path(), "chatty.py", &body);
    config.name = Some("chatty".into());
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    // A current-thread runtime keeps the stderr forwarder on this thread, under this subscriber.
    tracing::subscriber::with_default(subscriber, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let reward = ExternalReward::new(config).unwrap();
            reward.score(&batch(3)).await.unwrap();
            // The plugin wrote the line before answering; give the forwarder task turns until
            // it has logged it (bounded, so a broken forwarder fails instead of hanging).
            for _ in 0..400 {
                if String::from_utf8_lossy(&logs.0.lock().unwrap()).contains("judge: scored") {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(25)).await;
            }
        });
    });
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("plugin=chatty") && text.contains("judge: scored 3 samples"),
        "{text}"
    );
}

/// True once `pid` has exited (gone, or a zombie waiting for its new parent to reap it).
fn process_ended(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // "pid (comm) STATE ...": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn timeout_also_ends_what_a_wrapper_script_started() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("wrapper.sh");
    // A shell wrapper that starts a child (not exec), answers the first batch, then waits on the
    // child: the hang comes from the child. The first answer also proves the pid file is written.
    let pid_file = dir.path().join("child.pid");
    let body = format!(
        "sleep 3600 &\necho $! > {pid_file:?}\nread line\necho '{{\"version\": 1, \"scores\": [0.5]}}'\nread line\nwait\n"
    );
    std::fs::write(&script, body).unwrap();
    let mut config = ExternalConfig::new(&["sh", script.to_str().unwrap()]);
    config.timeout_s = 3.0;
    let reward = ExternalReward::new(config).unwrap();
    assert_eq!(
        reward.score(&batch(1)).await.unwrap(),
        vec![Score::new(0.5)]
    );
    assert!(matches!(
        plugin_error(&reward, &batch(1)).await,
        PluginError::Timeout { .. }
    ));
    let child: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The kill signal is delivered at once; give the kernel a bounded while to tear it down.
    for _ in 0..400 {
        if process_ended(child) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(
        process_ended(child),
        "the wrapper's child {child} outlived the timed-out plugin"
    );
}
