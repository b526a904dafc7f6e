//! A weighted sum of rewards, e.g. 1.0 x correctness + 0.2 x format - length penalty.
//!
//! Each component's raw score is reported as a sub-score under its name (logged as
//! `reward/NAME/mean`), and a component's own sub-scores as `NAME/SUB`.

use anyhow::{bail, ensure, Context, Result};

use crate::reward_trait::{BoxFuture, Reward};
use crate::sample::{Sample, Score};

/// One weighted term of a [`WeightedSum`].
pub struct Component {
    pub name: String,
    pub weight: f32,
    pub reward: Box<dyn Reward>,
}

pub struct WeightedSum {
    components: Vec<Component>,
}

impl WeightedSum {
    /// Component names must be unique (they are metric names).
    pub fn new(components: Vec<Component>) -> Result<Self> {
        ensure!(
            !components.is_empty(),
            "weighted_sum needs at least one component"
        );
        for (i, c) in components.iter().enumerate() {
            if components[..i].iter().any(|o| o.name == c.name) {
                bail!(
                    "weighted_sum: two components are named '{}'; give each a distinct `name`",
                    c.name
                );
            }
            ensure!(
                c.weight.is_finite(),
                "weighted_sum: component '{}' has a non-finite weight",
                c.name
            );
        }
        Ok(WeightedSum { components })
    }
}

impl Reward for WeightedSum {
    fn name(&self) -> &str {
        "weighted_sum"
    }

    /// Components run one after another: simple, and a slow component (a model or a plugin)
    /// dominates the time anyway.
    fn score<'a>(&'a self, samples: &'a [Sample]) -> BoxFuture<'a, Result<Vec<Score>>> {
        Box::pin(async move {
            let mut total: Vec<Score> = vec![Score::default(); samples.len()];
            for c in &self.components {
                let scores = c
                    .reward
                    .score(samples)
                    .await
                    .with_context(|| format!("weighted_sum component '{}'", c.name))?;
                ensure!(
                    scores.len() == samples.len(),
                    "weighted_sum component '{}' returned {} scores for {} samples",
                    c.name,
                    scores.len(),
                    samples.len()
                );
                for (t, s) in total.iter_mut().zip(scores) {
                    t.value += c.weight * s.value;
                    t.sub_scores.insert(c.name.clone(), s.value);
                    for (sub, v) in s.sub_scores {
                        t.sub_scores.insert(format!("{}/{sub}", c.name), v);
                    }
                }
            }
            Ok(total)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reward_trait::reward_fn;

    fn component(name: &str, weight: f32, reward: impl Reward + 'static) -> Component {
        Component {
            name: name.into(),
            weight,
            reward: Box::new(reward),
        }
    }

    #[tokio::test]
    async fn sums_with_weights_and_reports_parts() {
        let sum = WeightedSum::new(vec![
            component(
                "len",
                0.5,
                reward_fn("len", |s: &Sample| s.response.len() as f32),
            ),
            component(
                "neg",
                -2.0,
                reward_fn("neg", |_s: &Sample| Score::new(1.0).with_sub("inner", 3.0)),
            ),
        ])
        .unwrap();
        let scores = sum.score(&[Sample::from_text("q", "abcd")]).await.unwrap();
        assert_eq!(scores[0].value, 0.5 * 4.0 - 2.0);
        let subs: Vec<(&str, f32)> = scores[0]
            .sub_scores
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        assert_eq!(subs, [("len", 4.0), ("neg", 1.0), ("neg/inner", 3.0)]);
    }

    #[tokio::test]
    async fn failing_component_is_named() {
        let sum = WeightedSum::new(vec![component(
            "judge",
            1.0,
            reward_fn("judge", |_s: &Sample| -> Result<f32> {
                bail!("judge offline")
            }),
        )])
        .unwrap();
        let msg = format!(
            "{:#}",
            sum.score(&[Sample::from_text("q", "a")]).await.unwrap_err()
        );
        assert!(
            msg.starts_with("weighted_sum component 'judge'") && msg.contains("judge offline"),
            "{msg}"
        );
    }

    #[test]
    fn duplicate_names_rejected() {
        let f = || reward_fn("x", |_s: &Sample| 0.0);
        let err = WeightedSum::new(vec![component("a", 1.0, f()), component("a", 1.0, f())])
            .err()
            .unwrap();
        assert!(err.to_string().contains("two components are named 'a'"));
    }
}
