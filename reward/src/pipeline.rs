//! A reward plus its shaping: what the scheduler calls once per step.
//!
//! It checks what the reward returned (one finite score per sample), keeps the raw scores for
//! `score/mean` and sub-scores for `reward/NAME/mean`, and shapes the scores that training uses.

use std::collections::BTreeMap;
use std::sync::Mutex;

use anyhow::{bail, ensure, Context, Result};

use crate::reward_trait::Reward;
use crate::sample::{Sample, Score};
use crate::shaping::{Shaper, ShapingConfig, ShapingState};

pub struct RewardPipeline {
    reward: Box<dyn Reward>,
    /// Behind a mutex so the pipeline can be shared (`&self`); never held across an await.
    shaper: Mutex<Shaper>,
}

/// The scores of one batch.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredBatch {
    /// What the reward returned, with its sub-scores.
    pub raw: Vec<Score>,
    /// After shaping: the per-sample reward that training uses.
    pub shaped: Vec<f32>,
}

impl RewardPipeline {
    pub fn new(reward: Box<dyn Reward>, shaping: ShapingConfig) -> Result<Self> {
        Ok(RewardPipeline {
            reward,
            shaper: Mutex::new(Shaper::new(shaping)?),
        })
    }

    pub fn reward(&self) -> &dyn Reward {
        self.reward.as_ref()
    }

    /// Scores and shapes one batch.
    pub async fn score(&self, samples: &[Sample]) -> Result<ScoredBatch> {
        let name = self.reward.name();
        let raw = self.reward.score(samples).await.with_context(|| {
            format!(
                "reward '{name}' failed on a batch of {} samples",
                samples.len()
            )
        })?;
        ensure!(
            raw.len() == samples.len(),
            "reward '{name}' returned {} scores for {} samples",
            raw.len(),
            samples.len()
        );
        for (i, s) in raw.iter().enumerate() {
            if !s.value.is_finite() {
                bail!(
                    "reward '{name}' gave a non-finite score ({}) for sample {i}",
                    s.value
                );
            }
        }
        let values: Vec<f32> = raw.iter().map(|s| s.value).collect();
        let shaped = self.shaper.lock().expect("shaper lock").apply(&values);
        Ok(ScoredBatch { raw, shaped })
    }

    /// The shaping state to store in a checkpoint.
    pub fn shaping_state(&self) -> ShapingState {
        self.shaper.lock().expect("shaper lock").state()
    }

    /// Restores the shaping state from a checkpoint.
    pub fn load_shaping_state(&self, state: ShapingState) {
        self.shaper.lock().expect("shaper lock").load_state(state)
    }
}

impl ScoredBatch {
    /// The step metrics named in shared/metrics.md: reward/{mean,std,min,max} of the shaped
    /// reward, score/mean of the raw score, and reward/NAME/mean per sub-score (averaged over the
    /// samples that report it). Empty batches give no metrics.
    pub fn metrics(&self) -> BTreeMap<String, f64> {
        let mut m = BTreeMap::new();
        let n = self.shaped.len();
        if n == 0 {
            return m;
        }
        let shaped: Vec<f64> = self.shaped.iter().map(|&x| x as f64).collect();
        let mean = shaped.iter().sum::<f64>() / n as f64;
        let var = shaped.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        m.insert("reward/mean".into(), mean);
        m.insert("reward/std".into(), var.sqrt());
        m.insert(
            "reward/min".into(),
            shaped.iter().copied().fold(f64::INFINITY, f64::min),
        );
        m.insert(
            "reward/max".into(),
            shaped.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        );
        m.insert(
            "score/mean".into(),
            self.raw.iter().map(|s| s.value as f64).sum::<f64>() / n as f64,
        );
        let mut subs: BTreeMap<&str, (f64, usize)> = BTreeMap::new();
        for s in &self.raw {
            for (name, &v) in &s.sub_scores {
                let e = subs.entry(name).or_default();
                e.0 += v as f64;
                e.1 += 1;
            }
        }
        for (name, (sum, count)) in subs {
            m.insert(format!("reward/{name}/mean"), sum / count as f64);
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reward_trait::reward_fn;

    #[tokio::test]
    async fn shapes_and_reports_metrics() {
        let reward = reward_fn("len", |s: &Sample| {
            Score::new(s.response.len() as f32)
                .with_sub("has_a", s.response.contains('a') as u8 as f32)
        });
        let p = RewardPipeline::new(
            Box::new(reward),
            ShapingConfig {
                scale: 2.0,
                clip: Some([0.0, 5.0]),
                ..Default::default()
            },
        )
        .unwrap();
        let batch = p
            .score(&[Sample::from_text("q", "a"), Sample::from_text("q", "bcd")])
            .await
            .unwrap();
        assert_eq!(batch.shaped, [2.0, 5.0]);
        let m = batch.metrics();
        assert_eq!(m["reward/mean"], 3.5);
        assert_eq!(m["reward/std"], 1.5);
        assert_eq!((m["reward/min"], m["reward/max"]), (2.0, 5.0));
        assert_eq!(m["score/mean"], 2.0);
        assert_eq!(m["reward/has_a/mean"], 0.5);
    }

    #[tokio::test]
    async fn non_finite_scores_are_rejected() {
        let reward = reward_fn("nan", |_s: &Sample| f32::NAN);
        let p = RewardPipeline::new(Box::new(reward), ShapingConfig::default()).unwrap();
        let err = p.score(&[Sample::from_text("q", "a")]).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("reward 'nan' gave a non-finite score (NaN) for sample 0"),
            "{err:#}"
        );
    }
}
