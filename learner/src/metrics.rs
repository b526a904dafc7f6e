//! Per-update metrics, named as in shared/metrics.md (`actor/pg_clipfrac`, `critic/vf_loss`, ...).
//!
//! Objectives run once per micro-batch; the numbers a user reads are per optimiser step. Each
//! metric is therefore recorded with how it combines across micro-batches (and ranks):
//! - `sum`: already scaled by the global normaliser (losses), so the step value is the sum;
//! - `mean`: a mean over this micro-batch's tokens, combined weighted by its token count;
//! - `max`: the maximum.

use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug)]
enum Acc {
    Sum(f64),
    Mean { sum: f64, weight: f64 },
    Max(f64),
}

/// Accumulates metrics over micro-batches; [`Metrics::values`] gives the step's scalars.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    acc: BTreeMap<String, Acc>,
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// Adds `value` to a summed metric (a loss already divided by the global normaliser).
    pub fn sum(&mut self, name: &str, value: f64) {
        match self.acc.entry(name.to_string()).or_insert(Acc::Sum(0.0)) {
            Acc::Sum(s) => *s += value,
            other => *other = mismatch(name, other, Acc::Sum(value)),
        }
    }

    /// Records a mean over `weight` items (tokens, sequences, pairs).
    pub fn mean(&mut self, name: &str, value: f64, weight: f64) {
        if weight <= 0.0 {
            // Nothing was measured (e.g. a micro-batch without masked tokens): keep the name
            // known but do not move the mean.
            self.acc.entry(name.to_string()).or_insert(Acc::Mean {
                sum: 0.0,
                weight: 0.0,
            });
            return;
        }
        match self.acc.entry(name.to_string()).or_insert(Acc::Mean {
            sum: 0.0,
            weight: 0.0,
        }) {
            Acc::Mean { sum, weight: w } => {
                *sum += value * weight;
                *w += weight;
            }
            other => {
                *other = mismatch(
                    name,
                    other,
                    Acc::Mean {
                        sum: value * weight,
                        weight,
                    },
                )
            }
        }
    }

    /// Records a maximum.
    pub fn max(&mut self, name: &str, value: f64) {
        match self
            .acc
            .entry(name.to_string())
            .or_insert(Acc::Max(f64::NEG_INFINITY))
        {
            Acc::Max(m) => *m = m.max(value),
            other => *other = mismatch(name, other, Acc::Max(value)),
        }
    }

    /// Sets a scalar outright (lr, grad_norm, kl/coef): a sum that is written once.
    pub fn set(&mut self, name: &str, value: f64) {
        self.acc.insert(name.to_string(), Acc::Sum(value));
    }

    /// Folds another accumulator (another micro-batch or rank) into this one.
    pub fn merge(&mut self, other: &Metrics) {
        for (name, a) in &other.acc {
            match *a {
                Acc::Sum(v) => self.sum(name, v),
                Acc::Mean { sum, weight } => {
                    if weight > 0.0 {
                        self.mean(name, sum / weight, weight)
                    } else {
                        self.mean(name, 0.0, 0.0)
                    }
                }
                Acc::Max(v) => self.max(name, v),
            }
        }
    }

    /// The step's scalars, sorted by name. Means over nothing are left out.
    pub fn values(&self) -> BTreeMap<String, f64> {
        self.acc
            .iter()
            .filter_map(|(k, a)| {
                let v = match *a {
                    Acc::Sum(v) => v,
                    Acc::Mean { sum, weight } => {
                        if weight > 0.0 {
                            sum / weight
                        } else {
                            return None;
                        }
                    }
                    Acc::Max(v) => v,
                };
                Some((k.clone(), v))
            })
            .collect()
    }

    /// One scalar by name, if recorded.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.values().get(name).copied()
    }
}

// Recording one name as two kinds (say a sum and a mean) is a caller's mistake; the newer record
// wins and the mix-up is logged rather than turned into a panic in the middle of a run.
fn mismatch(name: &str, old: &Acc, new: Acc) -> Acc {
    tracing::warn!(
        metric = name,
        ?old,
        ?new,
        "metric recorded with two different kinds"
    );
    new
}
