//! Score shaping: raw score -> (optional running normalisation) -> scale -> bias -> clip.
//!
//! Running normalisation divides by the running std of all raw scores seen so far (and subtracts
//! the running mean), as OpenRLHF's `normalize_reward`. Its state is saved with checkpoints so a
//! resumed run shapes exactly as an uninterrupted one.

use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShapingConfig {
    /// Multiply (after normalisation).
    #[serde(default = "one")]
    pub scale: f32,
    /// Then add.
    #[serde(default)]
    pub bias: f32,
    /// Then clamp to [lo, hi].
    #[serde(default)]
    pub clip: Option<[f32; 2]>,
    /// First normalise with the running mean/std of raw scores (updated with each batch before
    /// it is normalised).
    #[serde(default)]
    pub normalize: bool,
    /// Added to the std to avoid dividing by zero.
    #[serde(default = "default_eps")]
    pub normalize_eps: f64,
}

fn one() -> f32 {
    1.0
}

fn default_eps() -> f64 {
    1e-8
}

impl Default for ShapingConfig {
    fn default() -> Self {
        ShapingConfig {
            scale: 1.0,
            bias: 0.0,
            clip: None,
            normalize: false,
            normalize_eps: default_eps(),
        }
    }
}

impl ShapingConfig {
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.scale.is_finite() && self.bias.is_finite(),
            "shaping: scale and bias must be finite"
        );
        if let Some([lo, hi]) = self.clip {
            ensure!(lo <= hi, "shaping: clip = [{lo}, {hi}] needs lo <= hi");
        }
        ensure!(
            self.normalize_eps > 0.0,
            "shaping: normalize_eps must be > 0"
        );
        Ok(())
    }
}

/// Running count, mean and sum of squared deviations (Welford / Chan et al. batched update).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RunningStats {
    pub count: u64,
    pub mean: f64,
    pub m2: f64,
}

impl RunningStats {
    /// Merges a batch: combine the batch's own mean/M2 with the running ones, which is exact and
    /// stable (no sum-of-squares cancellation).
    pub fn update(&mut self, xs: &[f32]) {
        if xs.is_empty() {
            return;
        }
        let n_b = xs.len() as f64;
        let mean_b = xs.iter().map(|&x| x as f64).sum::<f64>() / n_b;
        let m2_b = xs.iter().map(|&x| (x as f64 - mean_b).powi(2)).sum::<f64>();
        let n_a = self.count as f64;
        let n = n_a + n_b;
        let delta = mean_b - self.mean;
        self.mean += delta * n_b / n;
        self.m2 += m2_b + delta * delta * n_a * n_b / n;
        self.count += xs.len() as u64;
    }

    /// Population standard deviation of everything seen so far (0 before any data).
    pub fn std(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            (self.m2 / self.count as f64).sqrt()
        }
    }
}

/// What a checkpoint must keep to resume shaping exactly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ShapingState {
    pub running: RunningStats,
}

/// Applies [`ShapingConfig`] to batches of raw scores.
#[derive(Debug, Clone)]
pub struct Shaper {
    config: ShapingConfig,
    state: ShapingState,
}

impl Shaper {
    pub fn new(config: ShapingConfig) -> Result<Self> {
        config.validate()?;
        Ok(Shaper {
            config,
            state: ShapingState::default(),
        })
    }

    /// Shapes one batch of raw scores (and updates the running statistics if normalising).
    pub fn apply(&mut self, raw: &[f32]) -> Vec<f32> {
        let c = &self.config;
        let (mean, inv_std) = if c.normalize {
            self.state.running.update(raw);
            let s = &self.state.running;
            (s.mean, 1.0 / (s.std() + c.normalize_eps))
        } else {
            (0.0, 1.0)
        };
        raw.iter()
            .map(|&x| {
                let normed = ((x as f64 - mean) * inv_std) as f32;
                let y = normed * c.scale + c.bias;
                match c.clip {
                    Some([lo, hi]) => y.clamp(lo, hi),
                    None => y,
                }
            })
            .collect()
    }

    pub fn state(&self) -> ShapingState {
        self.state
    }

    pub fn load_state(&mut self, state: ShapingState) {
        self.state = state;
    }

    pub fn config(&self) -> &ShapingConfig {
        &self.config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_bias_clip_in_that_order() {
        let mut s = Shaper::new(ShapingConfig {
            scale: 2.0,
            bias: -1.0,
            clip: Some([-2.0, 2.0]),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.apply(&[0.0, 1.0, 5.0, -3.0]), [-1.0, 1.0, 2.0, -2.0]);
    }

    #[test]
    fn running_stats_match_two_pass_formula() {
        let xs: Vec<f32> = (0..37)
            .map(|i| ((i * 7919) % 101) as f32 * 0.1 - 3.0)
            .collect();
        let mut r = RunningStats::default();
        // Uneven batches, including an empty one.
        for chunk in [&xs[..5], &xs[5..5], &xs[5..6], &xs[6..30], &xs[30..]] {
            r.update(chunk);
        }
        let n = xs.len() as f64;
        let mean = xs.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = xs.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert_eq!(r.count, 37);
        assert!((r.mean - mean).abs() < 1e-12, "{} vs {mean}", r.mean);
        assert!((r.std() - var.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn normalised_batch_has_zero_mean_unit_std() {
        let mut s = Shaper::new(ShapingConfig {
            normalize: true,
            ..Default::default()
        })
        .unwrap();
        let out = s.apply(&[1.0, 2.0, 3.0, 4.0]);
        let mean: f32 = out.iter().sum::<f32>() / 4.0;
        let var: f32 = out.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / 4.0;
        assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5, "{out:?}");
    }

    #[test]
    fn state_round_trips_through_a_checkpoint() {
        let cfg = ShapingConfig {
            normalize: true,
            scale: 0.5,
            ..Default::default()
        };
        let batches: [&[f32]; 3] = [&[1.0, 0.0, 1.0], &[0.0, 0.0, 1.0, 1.0], &[1.0, 1.0]];
        let mut straight = Shaper::new(cfg.clone()).unwrap();
        let want: Vec<Vec<f32>> = batches.iter().map(|b| straight.apply(b)).collect();

        let mut first = Shaper::new(cfg.clone()).unwrap();
        first.apply(batches[0]);
        let saved = serde_json::to_string(&first.state()).unwrap();
        let mut resumed = Shaper::new(cfg).unwrap();
        resumed.load_state(serde_json::from_str(&saved).unwrap());
        assert_eq!(resumed.apply(batches[1]), want[1]);
        assert_eq!(resumed.apply(batches[2]), want[2]);
    }
}
