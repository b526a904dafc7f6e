//! The HTTP server: one embedded HTML page and a small JSON API it polls.
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /` | the page (page/index.html, compiled in) |
//! | `GET /api/runs` | every run under the log directory with its latest step and health counts |
//! | `GET /api/metrics?run=R&from=N` | metrics rows N.. as columns (the page asks only for new rows) |
//! | `GET /api/health?run=R` | health warnings (crate::health) |
//! | `GET /api/samples?run=R[&step=S]` | the sample table of step S (default: the latest) |
//! | `GET /api/timeline?run=R[&step=S]` | the dataflow calls of step S (default: the latest) |
//! | `GET /api/config?run=R` | the run's resolved config.toml, as text |
//!
//! Run names arrive percent-decoded in the query and go through runs::resolve_run, which only
//! returns folders inside the log directory. No route serves files by path.

use crate::health::{self, HealthWarning, Severity, Thresholds};
use crate::jsonl::JsonlTail;
use crate::metrics::{parse_step_record, scalar_names, to_json_number, StepRecord};
use crate::runs::{self, RunPathError};
use crate::samples::read_samples;
use crate::timeline::{parse_call, Call};
use anyhow::Context;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

const PAGE: &str = include_str!("../page/index.html");

/// At most this many samples of a step are sent; the page says how many there were.
const MAX_SAMPLES: usize = 256;

struct AppState {
    /// Canonical log directory: every served path starts with it.
    logdir: PathBuf,
    /// What was shown to the user as the log directory.
    logdir_display: String,
    /// Parsed metrics and timelines, by file, read incrementally as runs append to them.
    metrics: Mutex<HashMap<PathBuf, JsonlTail<StepRecord>>>,
    timelines: Mutex<HashMap<PathBuf, JsonlTail<Call>>>,
    thresholds: Thresholds,
}

/// A server bound to its address, not yet serving. Binding first lets a caller (or a test that
/// asked for port 0) learn the address before requests can arrive.
pub struct Bound {
    listener: tokio::net::TcpListener,
    router: Router,
}

impl Bound {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
            .context("the dashboard server stopped with an error")
    }
}

/// Checks the log directory and binds `addr`. Errors name the bad directory or address.
pub async fn bind(logdir: &Path, addr: SocketAddr) -> anyhow::Result<Bound> {
    bind_app(app(logdir)?, addr).await
}

/// The dashboard's routes over `logdir`, for callers that add layers of their own (the browser
/// test uses one to append to a run between two polls of the page).
pub fn app(logdir: &Path) -> anyhow::Result<Router> {
    let canonical = logdir.canonicalize().with_context(|| {
        format!(
            "log directory {} does not exist (pass --logdir with the folder your runs write to)",
            logdir.display()
        )
    })?;
    anyhow::ensure!(
        canonical.is_dir(),
        "log directory {} is not a directory",
        logdir.display()
    );
    let state = Arc::new(AppState {
        logdir: canonical,
        logdir_display: logdir.display().to_string(),
        metrics: Mutex::default(),
        timelines: Mutex::default(),
        thresholds: Thresholds::default(),
    });
    Ok(Router::new()
        .route("/", get(page))
        .route("/api/runs", get(api_runs))
        .route("/api/metrics", get(api_metrics))
        .route("/api/health", get(api_health))
        .route("/api/samples", get(api_samples))
        .route("/api/timeline", get(api_timeline))
        .route("/api/config", get(api_config))
        .with_state(state))
}

/// Binds `addr` for a router made by [`app`].
pub async fn bind_app(router: Router, addr: SocketAddr) -> anyhow::Result<Bound> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (is another server using the port?)"))?;
    Ok(Bound { listener, router })
}

async fn page() -> Response {
    ([(header::CACHE_CONTROL, "no-store")], Html(PAGE)).into_response()
}

/// An API failure: a status and one sentence, sent as {"error": "..."}.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<RunPathError> for ApiError {
    fn from(e: RunPathError) -> Self {
        let status = match e {
            RunPathError::Outside(_) => StatusCode::BAD_REQUEST,
            RunPathError::NotFound(_) | RunPathError::NotARun(_) => StatusCode::NOT_FOUND,
        };
        ApiError(status, e.to_string())
    }
}

impl From<std::io::Error> for ApiError {
    fn from(e: std::io::Error) -> Self {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading the run failed: {e}"),
        )
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

/// Runs blocking file work off the async threads.
async fn blocking(
    state: State<Arc<AppState>>,
    f: impl FnOnce(&AppState) -> ApiResult + Send + 'static,
) -> ApiResult {
    let state = state.0.clone();
    tokio::task::spawn_blocking(move || f(&state))
        .await
        .map_err(|e| {
            ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("request failed: {e}"),
            )
        })?
}

#[derive(Deserialize)]
struct RunQuery {
    run: String,
    #[serde(default)]
    from: usize,
    step: Option<u64>,
}

impl AppState {
    /// Brings the cached metrics of `run` up to date and hands them to `f`.
    fn with_metrics<R>(
        &self,
        run: &Path,
        f: impl FnOnce(&JsonlTail<StepRecord>) -> R,
    ) -> Result<R, ApiError> {
        let path = run.join(runs::METRICS_FILE);
        let mut cache = self.metrics.lock().unwrap_or_else(|p| p.into_inner());
        let tail = cache
            .entry(path.clone())
            .or_insert_with(|| JsonlTail::new(path));
        tail.refresh(parse_step_record)?;
        Ok(f(tail))
    }

    fn with_timeline<R>(
        &self,
        run: &Path,
        f: impl FnOnce(&JsonlTail<Call>) -> R,
    ) -> Result<R, ApiError> {
        let path = run.join(runs::TIMELINE_FILE);
        let mut cache = self.timelines.lock().unwrap_or_else(|p| p.into_inner());
        let tail = cache
            .entry(path.clone())
            .or_insert_with(|| JsonlTail::new(path));
        tail.refresh(parse_call)?;
        Ok(f(tail))
    }
}

async fn api_runs(state: State<Arc<AppState>>) -> ApiResult {
    blocking(state, |s| {
        let mut list = Vec::new();
        for name in runs::list_runs(&s.logdir) {
            let Ok(dir) = runs::resolve_run(&s.logdir, &name) else {
                continue;
            };
            let age_s = std::fs::metadata(dir.join(runs::METRICS_FILE))
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .map(|d| d.as_secs_f64());
            let summary = s.with_metrics(&dir, |m| {
                let warnings = health::check(&m.records, &s.thresholds);
                let errors = warnings
                    .iter()
                    .filter(|w| w.severity == Severity::Error)
                    .count();
                json!({
                    "name": name,
                    "rows": m.records.len(),
                    "last_step": m.records.last().map(|r| r.step),
                    "last_time": m.records.iter().rev().find_map(|r| r.time),
                    "age_s": age_s,
                    "errors": errors,
                    "warnings": warnings.len() - errors,
                })
            });
            // A run that cannot be read right now is left out of this listing, not an error.
            if let Ok(v) = summary {
                list.push(v);
            }
        }
        Ok(Json(json!({ "logdir": s.logdir_display, "runs": list })))
    })
    .await
}

async fn api_metrics(state: State<Arc<AppState>>, Query(q): Query<RunQuery>) -> ApiResult {
    blocking(state, move |s| {
        let dir = runs::resolve_run(&s.logdir, &q.run)?;
        s.with_metrics(&dir, |m| {
            let from = q.from.min(m.records.len());
            let rows = &m.records[from..];
            let mut series = Map::new();
            for name in scalar_names(rows) {
                let column: Vec<Value> = rows
                    .iter()
                    .map(|r| {
                        r.scalars
                            .get(&name)
                            .map_or(Value::Null, |&v| to_json_number(v))
                    })
                    .collect();
                series.insert(name, Value::Array(column));
            }
            Json(json!({
                "run": q.run,
                "rows": m.records.len(),
                "from": from,
                "skipped_lines": m.skipped_lines,
                "steps": rows.iter().map(|r| r.step).collect::<Vec<_>>(),
                "times": rows.iter().map(|r| r.time).collect::<Vec<_>>(),
                "series": series,
            }))
        })
    })
    .await
}

async fn api_health(state: State<Arc<AppState>>, Query(q): Query<RunQuery>) -> ApiResult {
    blocking(state, move |s| {
        let dir = runs::resolve_run(&s.logdir, &q.run)?;
        let warnings: Vec<HealthWarning> =
            s.with_metrics(&dir, |m| health::check(&m.records, &s.thresholds))?;
        Ok(Json(json!({ "run": q.run, "warnings": warnings })))
    })
    .await
}

async fn api_samples(state: State<Arc<AppState>>, Query(q): Query<RunQuery>) -> ApiResult {
    blocking(state, move |s| {
        let dir = runs::resolve_run(&s.logdir, &q.run)?;
        let steps = runs::sample_steps(&dir);
        let Some(step) = q
            .step
            .filter(|st| steps.contains(st))
            .or(steps.last().copied())
        else {
            return Ok(Json(
                json!({ "run": q.run, "steps": steps, "step": null, "samples": [] }),
            ));
        };
        let path = dir
            .join(runs::SAMPLES_DIR)
            .join(format!("step_{step}.jsonl"));
        let (samples, skipped) = read_samples(&path)?;
        let shown: Vec<Value> = samples
            .iter()
            .take(MAX_SAMPLES)
            .map(|x| {
                let sub: Map<String, Value> = x
                    .sub_rewards
                    .iter()
                    .map(|(k, &v)| (k.clone(), to_json_number(v)))
                    .collect();
                json!({
                    "prompt": x.prompt,
                    "response": x.response,
                    "reward": x.reward.map(to_json_number),
                    "sub_rewards": sub,
                })
            })
            .collect();
        Ok(Json(json!({
            "run": q.run,
            "steps": steps,
            "step": step,
            "total": samples.len(),
            "skipped_lines": skipped,
            "samples": shown,
        })))
    })
    .await
}

async fn api_timeline(state: State<Arc<AppState>>, Query(q): Query<RunQuery>) -> ApiResult {
    blocking(state, move |s| {
        let dir = runs::resolve_run(&s.logdir, &q.run)?;
        s.with_timeline(&dir, |t| {
            let mut steps: Vec<u64> = t.records.iter().map(|c| c.step).collect();
            steps.sort_unstable();
            steps.dedup();
            let step = q
                .step
                .filter(|st| steps.contains(st))
                .or(steps.last().copied());
            let calls: Vec<Value> = t
                .records
                .iter()
                .filter(|c| Some(c.step) == step)
                .map(|c| {
                    json!({
                        "call": c.call,
                        "start_s": c.start_s,
                        "end_s": c.end_s,
                        "extra": c.extra,
                    })
                })
                .collect();
            Json(json!({
                "run": q.run,
                "steps": steps,
                "step": step,
                "order": crate::timeline::CALL_ORDER,
                "skipped_lines": t.skipped_lines,
                "calls": calls,
            }))
        })
    })
    .await
}

async fn api_config(state: State<Arc<AppState>>, Query(q): Query<RunQuery>) -> ApiResult {
    blocking(state, move |s| {
        let dir = runs::resolve_run(&s.logdir, &q.run)?;
        let text = match std::fs::read_to_string(dir.join(runs::CONFIG_FILE)) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        };
        Ok(Json(json!({ "run": q.run, "text": text })))
    })
    .await
}
