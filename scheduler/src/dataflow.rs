//! The RL step as a dataflow of named model function calls. Each call runs through
//! [`Calls::call`], which records its wall time (`timing_s/NAME`, `timeline.jsonl`) and its peak
//! host memory, so every step's metrics show where the time and memory went. On a GPU the call
//! waits for the device at its end (kernels are asynchronous), so its time is its own.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Result;
use kernels::Device;

use crate::logging::{RunLog, TimelineEntry};

/// Times the calls of one step.
pub struct Calls<'a> {
    pub log: &'a mut RunLog,
    pub device: Device,
    /// The run's start (timeline times are seconds since it).
    pub t0: Instant,
    pub step: u64,
    pub metrics: BTreeMap<String, f64>,
    /// Largest per-call peak resident memory seen this step, in bytes.
    pub peak_bytes: u64,
}

impl<'a> Calls<'a> {
    pub fn new(log: &'a mut RunLog, device: Device, t0: Instant, step: u64) -> Self {
        Calls {
            log,
            device,
            t0,
            step,
            metrics: BTreeMap::new(),
            peak_bytes: 0,
        }
    }

    /// Runs `f` as the call `call` (timeline name, e.g. `actor_gen`), recording its time as
    /// `timing_s/{metric}` (e.g. `gen`).
    pub fn call<T>(
        &mut self,
        call: &str,
        metric: &str,
        f: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        // Host peak memory is what matters on the CPU. On a GPU it is not the interesting figure,
        // and resetting it (a write to /proc/self/clear_refs) takes the process's mmap write
        // lock, which can wait behind the GPU driver: skip it there.
        let track_host = self.device.is_cpu();
        if track_host {
            reset_peak_memory();
        }
        let start = Instant::now();
        let out = f()?;
        self.device.synchronize()?;
        let end = Instant::now();
        let peak = if track_host {
            peak_memory_bytes()
        } else {
            None
        };
        self.peak_bytes = self.peak_bytes.max(peak.unwrap_or(0));
        let (start_s, end_s) = (
            start.duration_since(self.t0).as_secs_f64(),
            end.duration_since(self.t0).as_secs_f64(),
        );
        *self
            .metrics
            .entry(format!("timing_s/{metric}"))
            .or_insert(0.0) += end_s - start_s;
        self.log.log_call(&TimelineEntry {
            step: self.step,
            call: call.to_string(),
            start_s,
            end_s,
            peak_mem_gb: peak.map(|b| b as f64 / 1e9),
        })?;
        Ok(out)
    }
}

/// Resets the kernel's peak-RSS counter of this process (Linux `clear_refs` = 5), so the next
/// reading is the peak of one call. Best effort: elsewhere the peak is the process's.
pub fn reset_peak_memory() {
    std::fs::write("/proc/self/clear_refs", "5").ok();
}

/// Peak resident memory since the last reset (Linux `VmHWM`), in bytes.
pub fn peak_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
