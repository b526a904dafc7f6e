//! Health checks on a run's metrics: the signs RLHF practitioners watch for, computed server-side so
//! the page, the API and the tests agree on them. docs/dashboard.md explains each one to users.
//!
//! Every check looks at windows of `window` consecutive finite values of one scalar, so one noisy
//! step does not raise a warning and one good step does not clear it.

use crate::metrics::{scalar_names, series, StepRecord};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Warning,
    Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthKind {
    NonFinite,
    EntropyCollapse,
    KlGrowing,
    KlLarge,
    ClipFractionHigh,
    LogprobMismatch,
    ResponsesTruncated,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthWarning {
    pub kind: HealthKind,
    pub severity: Severity,
    /// The scalar the warning is about.
    pub metric: String,
    /// The step the warning refers to (the first bad step for non-finite values, else the latest).
    pub step: u64,
    pub message: String,
}

/// Where the checks draw their lines. The defaults are deliberately loose: a warning should mean
/// "look at this run", not "this run is a little unusual".
#[derive(Debug, Clone)]
pub struct Thresholds {
    /// Values averaged per window.
    pub window: usize,
    /// Entropy collapse: the latest window's mean below this share of the first window's mean...
    pub entropy_collapse_ratio: f64,
    /// ...or below this many nats per token outright.
    pub entropy_floor: f64,
    /// KL growing: three consecutive windows each larger than the one before, the last at least
    /// this many times the first...
    pub kl_growth_ratio: f64,
    /// ...and above this (nats per token), so a KL rising from 0.001 to 0.005 early on is not flagged.
    pub kl_growth_min: f64,
    /// KL large: the latest window's mean above this many nats per token.
    pub kl_max: f64,
    /// Clip fraction high: the latest window's mean of actor/pg_clipfrac above this.
    pub clipfrac_max: f64,
    /// Rollout-vs-train mismatch: the latest window's mean |rollout/logprob_diff_mean| above this.
    pub logprob_diff_max: f64,
    /// Truncation: the latest window's mean of response_length/clip_ratio above this.
    pub response_clip_ratio_max: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            window: 5,
            entropy_collapse_ratio: 0.2,
            entropy_floor: 0.01,
            kl_growth_ratio: 2.0,
            kl_growth_min: 0.1,
            kl_max: 1.0,
            clipfrac_max: 0.2,
            logprob_diff_max: 0.05,
            response_clip_ratio_max: 0.3,
        }
    }
}

/// Runs every check; errors (non-finite values) come first.
pub fn check(records: &[StepRecord], t: &Thresholds) -> Vec<HealthWarning> {
    let mut out = non_finite(records);
    out.extend(entropy_collapse(records, t));
    out.extend(kl_growth(records, t));
    out.extend(mean_above(
        records,
        t,
        "actor/pg_clipfrac",
        t.clipfrac_max,
        HealthKind::ClipFractionHigh,
        true,
        "of tokens hit the PPO clip: each update moves the policy far from the one that sampled \
         the batch. Lower the learning rate or the PPO epochs per batch, or use larger mini-batches.",
    ));
    out.extend(mean_above(
        records,
        t,
        "rollout/logprob_diff_mean",
        t.logprob_diff_max,
        HealthKind::LogprobMismatch,
        false,
        "nats per token between the rollout engine's log-probs and the learner's for the same tokens: \
         PPO's ratio is then off before any update. Check precision (bf16 sampling vs f32 training), \
         the weights resharded to the rollout layout, and sampling settings (temperature, top-p).",
    ));
    out.extend(mean_above(
        records,
        t,
        "response_length/clip_ratio",
        t.response_clip_ratio_max,
        HealthKind::ResponsesTruncated,
        true,
        "of responses stop at the max-new-tokens limit: truncated answers usually get low or \
         misleading rewards. Raise the limit or penalise length.",
    ));
    out
}

/// Means of the last `count` windows of finite values, oldest first; None if there are too few.
fn last_windows(values: &[f64], window: usize, count: usize) -> Option<Vec<f64>> {
    let window = window.max(1);
    let need = window * count;
    if values.len() < need {
        return None;
    }
    let tail = &values[values.len() - need..];
    Some(
        tail.chunks(window)
            .map(|c| c.iter().sum::<f64>() / c.len() as f64)
            .collect(),
    )
}

fn finite_series(records: &[StepRecord], name: &str) -> (Vec<f64>, Option<u64>) {
    let mut last_step = None;
    let values = series(records, name)
        .filter(|(_, v)| v.is_finite())
        .map(|(s, v)| {
            last_step = Some(s);
            v
        })
        .collect();
    (values, last_step)
}

fn non_finite(records: &[StepRecord]) -> Vec<HealthWarning> {
    let mut out = Vec::new();
    for name in scalar_names(records) {
        let bad: Vec<(u64, f64)> = series(records, &name)
            .filter(|(_, v)| !v.is_finite())
            .collect();
        let Some(&(first_step, first)) = bad.first() else {
            continue;
        };
        let what = if first.is_nan() { "NaN" } else { "infinite" };
        let more = match bad.len() {
            1 => String::new(),
            n => format!(
                " ({n} non-finite values in all, the last at step {})",
                bad[n - 1].0
            ),
        };
        out.push(HealthWarning {
            kind: HealthKind::NonFinite,
            severity: Severity::Error,
            metric: name.clone(),
            step: first_step,
            message: format!(
                "{name} is {what} at step {first_step}{more}. A NaN or inf in a loss or gradient \
                 usually poisons the weights from then on: look at the learning rate, grad clipping, \
                 and the rewards and advantages of that step."
            ),
        });
    }
    out
}

fn entropy_collapse(records: &[StepRecord], t: &Thresholds) -> Option<HealthWarning> {
    let name = "actor/entropy";
    let (values, last_step) = finite_series(records, name);
    let w = t.window.max(1);
    let recent = last_windows(&values, w, 1)?[0];
    let early = values[..w].iter().sum::<f64>() / w as f64;
    let below_floor = recent < t.entropy_floor;
    let collapsed =
        values.len() >= 2 * w && early > 0.0 && recent < t.entropy_collapse_ratio * early;
    if !(below_floor || collapsed) {
        return None;
    }
    Some(HealthWarning {
        kind: HealthKind::EntropyCollapse,
        severity: Severity::Warning,
        metric: name.into(),
        step: last_step?,
        message: format!(
            "{name} fell from {} to {} nats per token ({:.0}% of its start): the policy is becoming \
             deterministic and stops exploring. Consider an entropy bonus, a lower learning rate, a \
             higher sampling temperature, or a larger KL coefficient.",
            fmt(early),
            fmt(recent),
            100.0 * recent / early.max(f64::MIN_POSITIVE),
        ),
    })
}

fn kl_growth(records: &[StepRecord], t: &Thresholds) -> Vec<HealthWarning> {
    let name = "kl/mean";
    let (values, last_step) = finite_series(records, name);
    let Some(step) = last_step else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Some(m) = last_windows(&values, t.window, 3) {
        let rising = m[0] < m[1] && m[1] < m[2];
        if rising && m[2] >= t.kl_growth_ratio * m[0] && m[2] > t.kl_growth_min {
            out.push(HealthWarning {
                kind: HealthKind::KlGrowing,
                severity: Severity::Warning,
                metric: name.into(),
                step,
                message: format!(
                    "{name} keeps growing: {} → {} → {} over the last {} steps. The policy drifts \
                     away from the reference without bound (often reward hacking). Raise the KL \
                     coefficient or use an adaptive KL controller.",
                    fmt(m[0]),
                    fmt(m[1]),
                    fmt(m[2]),
                    3 * t.window.max(1),
                ),
            });
        }
    }
    if let Some(m) = last_windows(&values, t.window, 1) {
        if m[0] > t.kl_max {
            out.push(HealthWarning {
                kind: HealthKind::KlLarge,
                severity: Severity::Warning,
                metric: name.into(),
                step,
                message: format!(
                    "{name} averages {} nats per token over the last {} steps (> {}): the policy is \
                     far from the reference model.",
                    fmt(m[0]),
                    t.window.max(1),
                    fmt(t.kl_max),
                ),
            });
        }
    }
    out
}

fn mean_above(
    records: &[StepRecord],
    t: &Thresholds,
    name: &str,
    limit: f64,
    kind: HealthKind,
    as_percent: bool,
    why: &str,
) -> Option<HealthWarning> {
    let (values, last_step) = finite_series(records, name);
    let values: Vec<f64> = values.into_iter().map(f64::abs).collect();
    let recent = last_windows(&values, t.window, 1)?[0];
    (recent > limit).then(|| HealthWarning {
        kind,
        severity: Severity::Warning,
        metric: name.into(),
        step: last_step.unwrap_or(0),
        message: format!(
            "{name} averages {} over the last {} steps (> {}): {} {why}",
            fmt(recent),
            t.window.max(1),
            fmt(limit),
            if as_percent {
                format!("{:.0}%", 100.0 * recent)
            } else {
                fmt(recent)
            },
        ),
    })
}

/// Four significant digits, no trailing zeros: what a person reads in a message.
fn fmt(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let digits = (3 - x.abs().log10().floor() as i32).clamp(0, 8) as usize;
    let s = format!("{x:.digits$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Records for steps 1..=n with one scalar following `f(step)`.
    fn run(name: &str, n: u64, f: impl Fn(u64) -> f64) -> Vec<StepRecord> {
        (1..=n)
            .map(|step| StepRecord {
                step,
                time: None,
                scalars: BTreeMap::from([(name.to_string(), f(step))]),
            })
            .collect()
    }

    fn kinds(records: &[StepRecord]) -> Vec<HealthKind> {
        check(records, &Thresholds::default())
            .iter()
            .map(|w| w.kind)
            .collect()
    }

    #[test]
    fn healthy_curves_raise_nothing() {
        assert!(kinds(&run("actor/entropy", 40, |s| 1.5 - 0.01 * s as f64)).is_empty());
        // KL rising early then settling, below the growth floor.
        assert!(
            kinds(&run("kl/mean", 40, |s| 0.05 * (1.0 - (-(s as f64) / 5.0).exp()))).is_empty()
        );
        assert!(kinds(&run("actor/pg_clipfrac", 40, |_| 0.05)).is_empty());
        assert!(
            kinds(&run("rollout/logprob_diff_mean", 40, |s| if s % 2 == 0 {
                0.01
            } else {
                -0.01
            }))
            .is_empty()
        );
        // Too few steps to judge.
        assert!(kinds(&run("actor/entropy", 4, |s| 2.0 / s as f64)).is_empty());
    }

    #[test]
    fn entropy_collapse_is_relative_to_the_start_or_absolute() {
        let w = check(
            &run("actor/entropy", 30, |s| 2.0 * 0.85f64.powi(s as i32)),
            &Thresholds::default(),
        );
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].kind, HealthKind::EntropyCollapse);
        assert_eq!(w[0].step, 30);
        assert!(
            w[0].message.contains("actor/entropy fell from"),
            "{}",
            w[0].message
        );
        // Near-deterministic from the start: only the floor can catch it.
        assert_eq!(
            kinds(&run("actor/entropy", 6, |_| 0.001)),
            vec![HealthKind::EntropyCollapse]
        );
    }

    #[test]
    fn kl_growing_without_bound_and_kl_large() {
        // Linear growth: the last three windows (steps 16..30) average 0.36, 0.46, 0.56, not 2x: fine.
        assert!(!kinds(&run("kl/mean", 30, |s| 0.02 * s as f64)).contains(&HealthKind::KlGrowing));
        // Exponential growth doubles well within three windows.
        let k = kinds(&run("kl/mean", 30, |s| 0.01 * 1.15f64.powi(s as i32)));
        assert!(k.contains(&HealthKind::KlGrowing), "{k:?}");
        // Past the absolute limit.
        let k = kinds(&run("kl/mean", 30, |s| 0.5 + 0.1 * s as f64));
        assert!(k.contains(&HealthKind::KlLarge), "{k:?}");
    }

    #[test]
    fn clip_fraction_mismatch_and_truncation_use_the_latest_window() {
        let k = kinds(&run("actor/pg_clipfrac", 20, |s| {
            if s > 15 {
                0.4
            } else {
                0.05
            }
        }));
        assert_eq!(k, vec![HealthKind::ClipFractionHigh]);
        // A bad start that recovered raises nothing.
        assert!(kinds(&run("actor/pg_clipfrac", 20, |s| if s <= 5 {
            0.4
        } else {
            0.05
        }))
        .is_empty());
        // The mismatch check uses magnitudes: a negative mean difference counts.
        let k = kinds(&run("rollout/logprob_diff_mean", 10, |_| -0.2));
        assert_eq!(k, vec![HealthKind::LogprobMismatch]);
        let k = kinds(&run("response_length/clip_ratio", 10, |_| 0.5));
        assert_eq!(k, vec![HealthKind::ResponsesTruncated]);
    }

    #[test]
    fn non_finite_values_are_errors_naming_the_first_bad_step() {
        let mut r = run("actor/grad_norm", 10, |s| match s {
            4 => f64::NAN,
            7 => f64::INFINITY,
            _ => 1.0,
        });
        r.extend(run("reward/mean", 3, |_| 0.5));
        let w = check(&r, &Thresholds::default());
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].kind, HealthKind::NonFinite);
        assert_eq!(w[0].severity, Severity::Error);
        assert_eq!(w[0].step, 4);
        assert!(
            w[0].message.starts_with(
                "actor/grad_norm is NaN at step 4 (2 non-finite values in all, the last at step 7)"
            ),
            "{}",
            w[0].message
        );
        // Non-finite values do not feed the window checks.
        let r = run(
            "actor/entropy",
            12,
            |s| if s == 12 { f64::NAN } else { 1.0 },
        );
        assert_eq!(kinds(&r), vec![HealthKind::NonFinite]);
    }

    #[test]
    fn numbers_in_messages_have_four_significant_digits() {
        assert_eq!(fmt(0.123456), "0.1235");
        assert_eq!(fmt(1234.56), "1235");
        assert_eq!(fmt(2.0), "2");
        assert_eq!(fmt(0.00012346), "0.0001235");
    }
}
