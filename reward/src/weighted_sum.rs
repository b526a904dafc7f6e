//! A weighted sum of rewards, e.g. 1.0 x correctness + 0.2 x format - length penalty.
//!
//! Each component's raw score is reported as a sub-score under its name (logged as
//! `reward/NAME/mean`), and a component's own sub-scores as `NAME/SUB`.

use std::task::Poll;

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

    /// Components run concurrently (a reward model on the blocking pool and a plugin process
    /// overlap), and are summed in order.
    fn score<'a>(&'a self, samples: &'a [Sample]) -> BoxFuture<'a, Result<Vec<Score>>> {
        Box::pin(async move {
            let futures = self
                .components
                .iter()
                .map(|c| c.reward.score(samples))
                .collect();
            let results = join_all(futures).await;
            let mut total: Vec<Score> = vec![Score::default(); samples.len()];
            for (c, result) in self.components.iter().zip(results) {
                let scores =
                    result.with_context(|| format!("weighted_sum component '{}'", c.name))?;
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

/// Polls all `futures` until every one is done; results in input order. (A few lines instead of
/// a dependency on the `futures` crate.)
async fn join_all<T>(mut futures: Vec<BoxFuture<'_, T>>) -> Vec<T> {
    let mut done: Vec<Option<T>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, slot) in futures.iter_mut().zip(done.iter_mut()) {
            // A finished future must not be polled again.
            if slot.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(v) => *slot = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    done.into_iter()
        .map(|v| v.expect("every future finished"))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

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

    /// Waits at a barrier that only opens when both components are inside `score` at once.
    struct Rendezvous(Arc<tokio::sync::Barrier>);

    impl Reward for Rendezvous {
        fn name(&self) -> &str {
            "rendezvous"
        }
        fn score<'a>(&'a self, samples: &'a [Sample]) -> BoxFuture<'a, Result<Vec<Score>>> {
            Box::pin(async move {
                self.0.wait().await;
                Ok(vec![Score::new(1.0); samples.len()])
            })
        }
    }

    #[tokio::test]
    async fn components_run_concurrently() {
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let sum = WeightedSum::new(vec![
            component("a", 1.0, Rendezvous(barrier.clone())),
            component("b", 2.0, Rendezvous(barrier)),
        ])
        .unwrap();
        // Run one after another, the first would wait at the barrier forever.
        let scored = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            sum.score(&[Sample::from_text("q", "a")]),
        )
        .await;
        assert_eq!(
            scored
                .expect("components did not run concurrently")
                .unwrap()[0]
                .value,
            3.0
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
