//! `REALIGN_PROFILE=1`: where a rollout's time goes. Each phase is closed by a device synchronise,
//! so its time is what the device (and host) spent on it, not just the launch cost. Profiling
//! therefore slows the rollout; it is for finding what to fix, not for reporting throughput.

use std::time::Instant;

use kernels::Device;

/// True when `REALIGN_PROFILE=1` is set.
pub fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("REALIGN_PROFILE").is_ok_and(|v| v == "1"))
}

/// Accumulated seconds per named phase, in first-seen order.
#[derive(Debug, Clone, Default)]
pub struct PhaseTimes {
    pub phases: Vec<(&'static str, f64)>,
}

impl PhaseTimes {
    pub fn add(&mut self, name: &'static str, secs: f64) {
        match self.phases.iter_mut().find(|(n, _)| *n == name) {
            Some((_, t)) => *t += secs,
            None => self.phases.push((name, secs)),
        }
    }

    /// One line: `name s (pct%)` per phase.
    pub fn summary(&self) -> String {
        let total: f64 = self.phases.iter().map(|(_, t)| t).sum();
        self.phases
            .iter()
            .map(|(n, t)| format!("{n} {t:.4} s ({:.1}%)", 100.0 * t / total.max(1e-12)))
            .collect::<Vec<_>>()
            .join(" | ")
    }
}

/// A stopwatch that, when profiling is on, synchronises `device` and charges the time since its
/// last mark to a phase. Off, every call is a no-op.
pub struct Stopwatch {
    on: bool,
    last: Instant,
    pub times: PhaseTimes,
}

impl Stopwatch {
    pub fn new() -> Stopwatch {
        Stopwatch {
            on: enabled(),
            last: Instant::now(),
            times: PhaseTimes::default(),
        }
    }

    /// A stopwatch that never measures.
    pub fn off() -> Stopwatch {
        Stopwatch {
            on: false,
            last: Instant::now(),
            times: PhaseTimes::default(),
        }
    }

    pub fn on(&self) -> bool {
        self.on
    }

    /// Starts the next phase now without charging anything.
    pub fn reset(&mut self) {
        if self.on {
            self.last = Instant::now();
        }
    }

    /// Charges the time since the last mark (after `device` finished its work) to `phase`.
    pub fn mark(&mut self, device: &Device, phase: &'static str) {
        if !self.on {
            return;
        }
        if let Err(e) = device.synchronize() {
            tracing::warn!("profile: synchronize failed: {e}");
        }
        let now = Instant::now();
        self.times.add(phase, (now - self.last).as_secs_f64());
        self.last = now;
    }

    /// As [`Stopwatch::mark`] with no device to wait for.
    pub fn mark_host(&mut self, phase: &'static str) {
        if !self.on {
            return;
        }
        let now = Instant::now();
        self.times.add(phase, (now - self.last).as_secs_f64());
        self.last = now;
    }
}

impl Default for Stopwatch {
    fn default() -> Self {
        Stopwatch::new()
    }
}
