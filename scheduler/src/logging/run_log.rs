//! The run folder's append-only logs.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use super::tensorboard::EventWriter;

/// One sample of a step's table (`samples/step_N.jsonl`).
#[derive(Clone, Debug, Serialize)]
pub struct SampleRow {
    pub prompt: String,
    pub response: String,
    pub reward: f64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub sub_rewards: BTreeMap<String, f64>,
}

/// One dataflow call in `timeline.jsonl`; times are seconds since the run started.
#[derive(Clone, Debug, Serialize)]
pub struct TimelineEntry {
    pub step: u64,
    pub call: String,
    pub start_s: f64,
    pub end_s: f64,
    /// Peak resident host memory during the call, when the OS reports it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_mem_gb: Option<f64>,
}

/// Appends to `metrics.jsonl`, `timeline.jsonl`, the TensorBoard file and `samples/`.
///
/// Each metrics line is written whole and flushed, so a reader (the dashboard) sees either a full
/// line or, at worst, a half-written last line that it skips.
pub struct RunLog {
    dir: PathBuf,
    metrics: BufWriter<File>,
    timeline: BufWriter<File>,
    tb: EventWriter,
}

fn append(path: &Path) -> Result<BufWriter<File>> {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {} for appending", path.display()))?;
    Ok(BufWriter::new(f))
}

pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl RunLog {
    /// Opens (or continues, on resume) the logs of the run folder `dir`.
    pub fn open(dir: &Path) -> Result<RunLog> {
        std::fs::create_dir_all(dir.join("samples"))
            .with_context(|| format!("cannot create run folder {}", dir.display()))?;
        Ok(RunLog {
            dir: dir.to_path_buf(),
            metrics: append(&dir.join("metrics.jsonl"))?,
            timeline: append(&dir.join("timeline.jsonl"))?,
            tb: EventWriter::create(&dir.join("tb"), unix_now())?,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes one step's scalars to metrics.jsonl and TensorBoard.
    pub fn log_metrics(&mut self, step: u64, scalars: &BTreeMap<String, f64>) -> Result<()> {
        let time = unix_now();
        let mut line = serde_json::Map::new();
        line.insert("step".into(), step.into());
        line.insert("time".into(), time.into());
        for (k, v) in scalars {
            // JSON has no NaN; write null so readers see a missing value, and TensorBoard keeps NaN.
            let value = serde_json::Number::from_f64(*v)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null);
            line.insert(k.clone(), value);
        }
        let text = serde_json::to_string(&line)?;
        writeln!(self.metrics, "{text}")?;
        self.metrics.flush().context("cannot write metrics.jsonl")?;
        let pairs: Vec<(&str, f64)> = scalars.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        self.tb.add_scalars(step, time, &pairs)?;
        self.tb.flush()
    }

    /// Records the wall time of one dataflow call.
    pub fn log_call(&mut self, entry: &TimelineEntry) -> Result<()> {
        writeln!(self.timeline, "{}", serde_json::to_string(entry)?)?;
        self.timeline.flush().context("cannot write timeline.jsonl")
    }

    /// Writes `samples/step_N.jsonl` (atomically: a reader never sees half a table).
    pub fn log_samples(&self, step: u64, rows: &[SampleRow]) -> Result<()> {
        let mut text = String::new();
        for r in rows {
            text.push_str(&serde_json::to_string(r)?);
            text.push('\n');
        }
        let path = self.dir.join("samples").join(format!("step_{step}.jsonl"));
        crate::atomic::write_file(&path, text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_lines_are_json_with_step_time_and_nulls_for_nan() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = RunLog::open(dir.path()).unwrap();
        let mut m = BTreeMap::new();
        m.insert("reward/mean".to_string(), 0.25);
        m.insert("actor/pg_loss".to_string(), f64::NAN);
        log.log_metrics(3, &m).unwrap();
        log.log_samples(
            3,
            &[SampleRow {
                prompt: "1+1=".into(),
                response: "2".into(),
                reward: 1.0,
                sub_rewards: BTreeMap::new(),
            }],
        )
        .unwrap();
        let text = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["step"], 3);
        assert_eq!(v["reward/mean"], 0.25);
        assert!(v["actor/pg_loss"].is_null());
        assert!(v["time"].as_f64().unwrap() > 1.0e9);
        let samples = std::fs::read_to_string(dir.path().join("samples/step_3.jsonl")).unwrap();
        assert!(samples.contains("\"response\":\"2\""));
    }
}
