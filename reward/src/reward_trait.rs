//! The [`Reward`] trait: one batched, async call per batch of rollouts.
//!
//! Async because rewards may be slow (a reward model on the GPU, a plugin process, a remote
//! verifier) and the scheduler drives them from tokio. The trait returns a boxed future instead of
//! using `async fn` so that `Box<dyn Reward>` works; sync rewards implement [`SyncReward`] (or use
//! [`reward_fn`]) and never see the future at all.

use std::future::Future;
use std::pin::Pin;

use anyhow::Result;

use crate::sample::{Sample, Score};

/// A `Send` boxed future, as returned by [`Reward::score`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Scores a batch of rollouts.
///
/// `score` must return exactly one [`Score`] per sample, in the same order. Return an error (with
/// context) rather than a made-up score when a sample cannot be scored: the scheduler fails the
/// step with that message instead of training on a silent zero.
///
/// ```
/// use reward::{BoxFuture, Reward, Sample, Score};
///
/// struct Brevity;
/// impl Reward for Brevity {
///     fn name(&self) -> &str { "brevity" }
///     fn score<'a>(&'a self, samples: &'a [Sample]) -> BoxFuture<'a, anyhow::Result<Vec<Score>>> {
///         Box::pin(async move {
///             Ok(samples.iter().map(|s| Score::new(-(s.response.len() as f32) / 100.0)).collect())
///         })
///     }
/// }
/// ```
pub trait Reward: Send + Sync {
    /// A short name for logs and error messages.
    fn name(&self) -> &str;

    /// Scores `samples`; one [`Score`] per sample, in order.
    fn score<'a>(&'a self, samples: &'a [Sample]) -> BoxFuture<'a, Result<Vec<Score>>>;
}

/// A reward computed synchronously on the calling thread; every `SyncReward` is a [`Reward`].
///
/// Use it for cheap rule rewards. It runs inside the async task, so keep it fast (rule checks,
/// regexes); wrap heavy CPU work in `tokio::task::spawn_blocking` behind a plain [`Reward`].
pub trait SyncReward: Send + Sync {
    /// The name used in logs and errors (see [`Reward::name`]).
    fn reward_name(&self) -> &str;

    /// Scores `samples`; one [`Score`] per sample, in order.
    fn score_sync(&self, samples: &[Sample]) -> Result<Vec<Score>>;
}

impl<T: SyncReward> Reward for T {
    fn name(&self) -> &str {
        self.reward_name()
    }
    fn score<'a>(&'a self, samples: &'a [Sample]) -> BoxFuture<'a, Result<Vec<Score>>> {
        let scores = self.score_sync(samples);
        Box::pin(std::future::ready(scores))
    }
}

/// What a per-sample closure may return: a plain number, a [`Score`], or a `Result` of either.
pub trait IntoScore {
    fn into_score(self) -> Result<Score>;
}

impl IntoScore for f32 {
    fn into_score(self) -> Result<Score> {
        Ok(Score::new(self))
    }
}

impl IntoScore for Score {
    fn into_score(self) -> Result<Score> {
        Ok(self)
    }
}

impl<T: IntoScore> IntoScore for Result<T> {
    fn into_score(self) -> Result<Score> {
        self.and_then(IntoScore::into_score)
    }
}

/// A reward made from a per-sample closure; see [`reward_fn`].
pub struct FnReward<F> {
    name: String,
    f: F,
}

/// Turns a per-sample closure into a [`Reward`].
///
/// ```
/// use reward::{reward_fn, Sample};
/// let says_please = reward_fn("polite", |s: &Sample| {
///     if s.response.contains("please") { 1.0 } else { 0.0 }
/// });
/// ```
pub fn reward_fn<F, S>(name: &str, f: F) -> FnReward<F>
where
    F: Fn(&Sample) -> S + Send + Sync,
    S: IntoScore,
{
    FnReward {
        name: name.to_string(),
        f,
    }
}

impl<F, S> SyncReward for FnReward<F>
where
    F: Fn(&Sample) -> S + Send + Sync,
    S: IntoScore,
{
    fn reward_name(&self) -> &str {
        &self.name
    }
    fn score_sync(&self, samples: &[Sample]) -> Result<Vec<Score>> {
        samples
            .iter()
            .enumerate()
            .map(|(i, s)| {
                (self.f)(s)
                    .into_score()
                    .map_err(|e| e.context(format!("reward '{}' failed on sample {i}", self.name)))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn closure_is_a_boxed_dyn_reward() {
        let r: Box<dyn Reward> = Box::new(reward_fn("len", |s: &Sample| s.response.len() as f32));
        let samples = [Sample::from_text("p", "abc"), Sample::from_text("p", "")];
        let scores = r.score(&samples).await.unwrap();
        assert_eq!(r.name(), "len");
        assert_eq!(scores, vec![Score::new(3.0), Score::new(0.0)]);
    }

    #[tokio::test]
    async fn closure_error_names_reward_and_sample() {
        let r = reward_fn("picky", |s: &Sample| -> Result<f32> {
            anyhow::ensure!(!s.response.is_empty(), "empty response");
            Ok(1.0)
        });
        let samples = [Sample::from_text("p", "x"), Sample::from_text("p", "")];
        let err = r.score(&samples).await.unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("reward 'picky' failed on sample 1"), "{msg}");
        assert!(msg.contains("empty response"), "{msg}");
    }
}
