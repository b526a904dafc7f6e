//! Running a reward plugin process: spawn on first use, one request/response line per batch, a
//! timeout per batch, bounded restarts when it crashes, and errors that name the plugin.
//!
//! Nothing here loses a batch silently: every batch ends either with one score per sample or
//! with a [`PluginError`]; nothing waits longer than `timeout_s` for an answer.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::JoinHandle;

use super::protocol::{parse_response, Rejection, Request, PROTOCOL_VERSION};
use crate::reward_trait::{BoxFuture, Reward};
use crate::sample::{Sample, Score};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalConfig {
    /// The program and its arguments, e.g. ["python3", "examples/reward_plugin.py"].
    pub command: Vec<String>,
    /// Name used in logs and errors; defaults to the command line. Not read from the config
    /// section itself: inside a weighted_sum the component's `name` is used.
    #[serde(skip)]
    pub name: Option<String>,
    /// Longest wait for the answer to one batch, in seconds.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: f64,
    /// How many times a batch may restart a crashed plugin before the batch fails.
    #[serde(default = "default_max_restarts")]
    pub max_restarts: u32,
    /// Send at most this many samples per request line (default: the whole batch).
    #[serde(default)]
    pub batch_size: Option<usize>,
    /// Extra environment variables for the plugin.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory for the plugin (default: the current directory).
    #[serde(default)]
    pub cwd: Option<PathBuf>,
}

fn default_timeout_s() -> f64 {
    60.0
}

fn default_max_restarts() -> u32 {
    2
}

impl ExternalConfig {
    /// A config with defaults for everything but the command.
    pub fn new<S: AsRef<str>>(command: &[S]) -> Self {
        ExternalConfig {
            command: command.iter().map(|s| s.as_ref().to_string()).collect(),
            name: None,
            timeout_s: default_timeout_s(),
            max_restarts: default_max_restarts(),
            batch_size: None,
            env: BTreeMap::new(),
            cwd: None,
        }
    }
}

/// How a plugin failed a batch. Each message names the plugin.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("could not start reward plugin '{plugin}': {source}")]
    Spawn {
        plugin: String,
        source: std::io::Error,
    },
    #[error("reward plugin '{plugin}' did not answer a batch of {samples} samples within {timeout_s} s (timeout_s); it was killed and will be restarted for the next batch")]
    Timeout {
        plugin: String,
        samples: usize,
        timeout_s: f64,
    },
    #[error("reward plugin '{plugin}' exited without answering, {attempts} times in a row (last: {status}); giving up on this batch. Last stderr lines:\n{stderr}")]
    Crashed {
        plugin: String,
        attempts: u32,
        status: String,
        stderr: String,
    },
    #[error("reward plugin '{plugin}' printed a malformed response line ({reason}); the line starts with: {line_start:?}")]
    Malformed {
        plugin: String,
        reason: String,
        line_start: String,
    },
    #[error("reward plugin '{plugin}' returned {got} {what} for a batch of {want} samples")]
    WrongCount {
        plugin: String,
        what: String,
        got: usize,
        want: usize,
    },
    #[error("reward plugin '{plugin}' reported an error: {message}")]
    Reported { plugin: String, message: String },
}

/// How many stderr lines to keep for crash reports, and how long each may be.
const STDERR_TAIL_LINES: usize = 20;
const STDERR_LINE_CHARS: usize = 500;
/// How much of a malformed line to quote.
const QUOTE_CHARS: usize = 200;
/// Grace period for a dying process to exit and flush its stderr before we kill it / stop reading.
const REAP_GRACE: Duration = Duration::from_secs(2);

/// A live plugin process, the leader of its own process group.
struct Running {
    child: Child,
    /// Also the process-group id: killing the group reaches what a wrapper script started.
    pid: Option<u32>,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    stderr_task: JoinHandle<()>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    /// A request was written and its answer not yet read (the caller's future was dropped
    /// mid-batch); the stream is out of step and the process must be replaced.
    in_flight: bool,
}

/// What one request/response exchange ended with (before parsing the line).
enum Exchange {
    Line(String),
    /// stdout closed or stdin broken: the process died.
    Closed,
    /// Not UTF-8.
    Garbled(String),
}

/// A reward computed by an external program speaking the JSON-lines protocol.
pub struct ExternalReward {
    name: String,
    config: ExternalConfig,
    timeout: Duration,
    process: tokio::sync::Mutex<Option<Running>>,
    next_batch_id: AtomicU64,
}

impl ExternalReward {
    /// Checks the config; the process starts on the first batch.
    pub fn new(config: ExternalConfig) -> Result<Self> {
        ensure!(
            !config.command.is_empty() && !config.command[0].is_empty(),
            "external reward: `command` must name a program"
        );
        ensure!(
            config.timeout_s.is_finite() && config.timeout_s > 0.0,
            "external reward: timeout_s must be a positive number of seconds"
        );
        ensure!(
            config.batch_size != Some(0),
            "external reward: batch_size must be >= 1"
        );
        let name = config
            .name
            .clone()
            .unwrap_or_else(|| config.command.join(" "));
        Ok(ExternalReward {
            name,
            timeout: Duration::from_secs_f64(config.timeout_s),
            config,
            process: tokio::sync::Mutex::new(None),
            next_batch_id: AtomicU64::new(0),
        })
    }

    fn spawn(&self) -> Result<Running, PluginError> {
        let mut cmd = Command::new(&self.config.command[0]);
        cmd.args(&self.config.command[1..])
            // Python block-buffers a piped stdout; a plugin that forgets to flush would look hung.
            .env("PYTHONUNBUFFERED", "1")
            .envs(&self.config.env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // Its own process group, so that a timeout or crash also ends the programs a wrapper
        // script started (killing `sh` alone would orphan them).
        #[cfg(unix)]
        cmd.process_group(0);
        if let Some(dir) = &self.config.cwd {
            cmd.current_dir(dir);
        }
        let mut child = cmd.spawn().map_err(|source| PluginError::Spawn {
            plugin: self.name.clone(),
            source,
        })?;
        let pid = child.id();
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
        let stderr = child.stderr.take().expect("stderr is piped");
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        let stderr_task = tokio::spawn(forward_stderr(
            self.name.clone(),
            stderr,
            stderr_tail.clone(),
        ));
        tracing::info!(plugin = %self.name, pid = child.id(), "started reward plugin");
        Ok(Running {
            child,
            stdin,
            stdout,
            stderr_task,
            stderr_tail,
            pid,
            in_flight: false,
        })
    }

    /// Scores one request's worth of samples, restarting a crashed plugin up to `max_restarts`.
    async fn score_chunk(&self, samples: &[Sample]) -> Result<Vec<Score>, PluginError> {
        let batch_id = self.next_batch_id.fetch_add(1, Ordering::Relaxed);
        let mut request = serde_json::to_string(&Request {
            version: PROTOCOL_VERSION,
            batch_id,
            samples,
        })
        .expect("samples serialise to JSON");
        request.push('\n');

        let mut slot = self.process.lock().await;
        let mut attempts = 0u32;
        loop {
            if slot.as_ref().is_some_and(|r| r.in_flight) {
                tracing::warn!(plugin = %self.name, "previous batch was abandoned mid-request; restarting the plugin");
                kill(slot.take()).await;
            }
            if slot.is_none() {
                *slot = Some(self.spawn()?);
            }
            let running = slot.as_mut().expect("just ensured");
            running.in_flight = true;
            let exchanged = tokio::time::timeout(self.timeout, exchange(running, &request)).await;
            match exchanged {
                Err(_elapsed) => {
                    kill(slot.take()).await;
                    return Err(PluginError::Timeout {
                        plugin: self.name.clone(),
                        samples: samples.len(),
                        timeout_s: self.config.timeout_s,
                    });
                }
                Ok(Exchange::Closed) => {
                    attempts += 1;
                    let (status, stderr) = reap(slot.take().expect("was running")).await;
                    if attempts > self.config.max_restarts {
                        return Err(PluginError::Crashed {
                            plugin: self.name.clone(),
                            attempts,
                            status,
                            stderr,
                        });
                    }
                    tracing::warn!(plugin = %self.name, %status, attempt = attempts, max_restarts = self.config.max_restarts, "reward plugin exited without answering; restarting it and resending the batch");
                }
                Ok(Exchange::Garbled(reason)) => {
                    kill(slot.take()).await;
                    return Err(PluginError::Malformed {
                        plugin: self.name.clone(),
                        reason,
                        line_start: String::new(),
                    });
                }
                Ok(Exchange::Line(line)) => {
                    running.in_flight = false;
                    let parsed = parse_response(&line, batch_id, samples.len());
                    if matches!(parsed, Err(Rejection::Malformed(_))) {
                        // The stream may be out of step (e.g. stray prints); start afresh next batch.
                        kill(slot.take()).await;
                    }
                    return parsed.map_err(|rejection| self.rejection_error(rejection, &line));
                }
            }
        }
    }

    fn rejection_error(&self, rejection: Rejection, line: &str) -> PluginError {
        let plugin = self.name.clone();
        match rejection {
            Rejection::Malformed(reason) => PluginError::Malformed {
                plugin,
                reason,
                line_start: line.chars().take(QUOTE_CHARS).collect(),
            },
            Rejection::WrongCount { what, got, want } => PluginError::WrongCount {
                plugin,
                what,
                got,
                want,
            },
            Rejection::Reported(message) => PluginError::Reported { plugin, message },
        }
    }
}

impl Reward for ExternalReward {
    fn name(&self) -> &str {
        &self.name
    }

    fn score<'a>(&'a self, samples: &'a [Sample]) -> BoxFuture<'a, Result<Vec<Score>>> {
        Box::pin(async move {
            let chunk = self.config.batch_size.unwrap_or(samples.len()).max(1);
            let mut scores = Vec::with_capacity(samples.len());
            for part in samples.chunks(chunk) {
                scores.extend(self.score_chunk(part).await?);
            }
            Ok(scores)
        })
    }
}

/// Writes one request line and reads one non-blank response line.
async fn exchange(running: &mut Running, request: &str) -> Exchange {
    if running.stdin.write_all(request.as_bytes()).await.is_err()
        || running.stdin.flush().await.is_err()
    {
        return Exchange::Closed;
    }
    loop {
        let mut buf = Vec::new();
        match running.stdout.read_until(b'\n', &mut buf).await {
            // EOF, or EOF in the middle of a line: the process died while answering.
            Ok(0) => return Exchange::Closed,
            Ok(_) if buf.last() != Some(&b'\n') => return Exchange::Closed,
            Ok(_) => {}
            Err(_) => return Exchange::Closed,
        }
        match String::from_utf8(buf) {
            Ok(line) if line.trim().is_empty() => continue,
            Ok(line) => return Exchange::Line(line.trim_end().to_string()),
            Err(e) => return Exchange::Garbled(format!("output is not UTF-8: {e}")),
        }
    }
}

/// Waits briefly for a process whose stdout closed, kills it if it lingers, and returns its exit
/// status and last stderr lines for the error message.
async fn reap(mut running: Running) -> (String, String) {
    let status = match tokio::time::timeout(REAP_GRACE, running.child.wait()).await {
        Ok(Ok(status)) => describe(status),
        Ok(Err(e)) => format!("unknown exit status ({e})"),
        Err(_) => {
            let _ = running.child.kill().await;
            "closed its stdout and was killed".to_string()
        }
    };
    // Children it left behind would keep its stderr open (and keep running).
    kill_group(running.pid);
    // Let the forwarder drain what the process wrote before dying.
    if tokio::time::timeout(REAP_GRACE, &mut running.stderr_task)
        .await
        .is_err()
    {
        running.stderr_task.abort();
    }
    let tail = running
        .stderr_tail
        .lock()
        .expect("stderr tail lock")
        .iter()
        .cloned()
        .collect::<Vec<_>>();
    let stderr = if tail.is_empty() {
        "(none)".to_string()
    } else {
        tail.join("\n")
    };
    (status, stderr)
}

/// Kills the plugin's whole process group and waits (briefly) for the leader to exit.
async fn kill(running: Option<Running>) {
    if let Some(mut r) = running {
        kill_group(r.pid);
        let _ = tokio::time::timeout(REAP_GRACE, r.child.wait()).await;
    }
}

impl Drop for Running {
    /// Dropping a plugin (the reward is dropped, or replaced) ends its whole process group;
    /// `kill_on_drop` alone would reach only the leader.
    fn drop(&mut self) {
        kill_group(self.pid);
        self.stderr_task.abort();
    }
}

fn kill_group(pid: Option<u32>) {
    #[cfg(unix)]
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: kill(2) only sends a signal; a negative pid addresses the process group that
        // spawn() created with this pid as its id. An already-empty group gives ESRCH, ignored.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    #[cfg(not(unix))]
    let _ = pid;
}

fn describe(status: ExitStatus) -> String {
    match status.code() {
        Some(code) => format!("exit code {code}"),
        None => format!("{status}"),
    }
}

/// Forwards the plugin's stderr to tracing, line by line, keeping the last lines for errors.
async fn forward_stderr(
    plugin: String,
    stderr: tokio::process::ChildStderr,
    tail: Arc<Mutex<VecDeque<String>>>,
) {
    let mut lines = BufReader::new(stderr);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match lines.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line: String = String::from_utf8_lossy(&buf)
            .trim_end()
            .chars()
            .take(STDERR_LINE_CHARS)
            .collect();
        tracing::info!(target: "reward::plugin", plugin = %plugin, "{line}");
        let mut tail = tail.lock().expect("stderr tail lock");
        if tail.len() == STDERR_TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
}
