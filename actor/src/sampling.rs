//! Next-token sampling: temperature, top-k, top-p, and the log-prob of the sampled token under the
//! distribution actually sampled from.
//!
//! Randomness is counter-based: sample i of a request with seed s has the key
//! [`sample_key`](s, i), and its t-th generated token uses the 32-bit [`draw`](key, t), a hash of
//! the pair. No RNG state is carried from step to step, so a token depends only on the logits, the
//! parameters and (seed, sample, position): not on the batch, on preemption, or on the device that
//! samples. The uniform of a draw is u = (draw + 0.5) / 2^32.
//!
//! Every row is sampled where the logits are, by `kernels::ops::sample_tokens` (on the GPU in
//! normal use; its CPU reference on the host, which [`sample`] calls): logits / temperature, then
//! top-k (ids whose logit is at least the k-th largest), then top-p on what top-k kept (the
//! smallest most-likely set whose mass reaches p; HF / vLLM order), ties at either threshold
//! kept; the kept tokens are renormalised and u picks one by inverse CDF in token-id order.
//!
//! Temperature 0 means greedy (argmax, lowest id on ties). Its "distribution actually used" would be
//! a point mass with log-prob 0, which tells a learner nothing, so greedy reports the log-prob under
//! the unfiltered model distribution at temperature 1 instead.

use kernels::cpu::sampling::{sample_row, Filter};
use kernels::ops::SampleSpec;
use serde::{Deserialize, Serialize};

/// How to draw the tokens of one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 = off.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches p; 1 = off.
    pub top_p: f32,
    /// Stop tokens are banned until this many tokens were generated.
    pub min_new_tokens: usize,
    pub max_new_tokens: usize,
    /// Generation ends after emitting one of these (it is kept in the output). Usually the EOS ids
    /// from the model's generation config.
    pub stop_token_ids: Vec<u32>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_new_tokens: 0,
            max_new_tokens: 64,
            stop_token_ids: Vec::new(),
        }
    }
}

impl SamplingParams {
    /// Greedy decoding of up to `max_new_tokens` tokens.
    pub fn greedy(max_new_tokens: usize) -> SamplingParams {
        SamplingParams {
            temperature: 0.0,
            max_new_tokens,
            ..Default::default()
        }
    }

    /// Errors with one sentence naming the bad field.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.temperature >= 0.0 && self.temperature.is_finite(),
            "temperature must be a finite number >= 0, got {}",
            self.temperature
        );
        anyhow::ensure!(
            self.top_p > 0.0 && self.top_p <= 1.0,
            "top_p must be in (0, 1], got {}",
            self.top_p
        );
        anyhow::ensure!(self.max_new_tokens > 0, "max_new_tokens must be at least 1");
        anyhow::ensure!(
            self.min_new_tokens <= self.max_new_tokens,
            "min_new_tokens ({}) must not exceed max_new_tokens ({})",
            self.min_new_tokens,
            self.max_new_tokens
        );
        Ok(())
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
}

impl SamplingParams {
    /// True when top-k or top-p removes tokens from a vocabulary of `vocab`.
    pub fn filters(&self, vocab: usize) -> bool {
        !self.is_greedy() && ((self.top_k > 0 && self.top_k < vocab) || self.top_p < 1.0)
    }

    /// Top-k / top-p as the sampling op takes them.
    pub fn filter(&self) -> Filter {
        Filter {
            top_k: u32::try_from(self.top_k).unwrap_or(u32::MAX),
            top_p: self.top_p,
        }
    }

    /// The `sample_tokens` spec that draws from logits row `row` with `draw`, `banned` ids
    /// excluded.
    pub fn spec(&self, row: u32, draw: u32, banned: &[u32]) -> SampleSpec {
        let f = self.filter();
        SampleSpec {
            row,
            temperature: self.temperature,
            top_k: f.top_k,
            top_p: f.top_p,
            draw,
            banned: banned.to_vec(),
        }
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The random key of sample `index` of a request with `seed`: independent streams for the n
/// samples of one prompt, reproducible from (seed, index) alone.
pub fn sample_key(seed: u64, index: usize) -> u64 {
    splitmix64(seed ^ splitmix64(index as u64))
}

/// The 32-bit draw for the token at `step` (tokens generated before it) of the stream `key`.
pub fn draw(key: u64, step: usize) -> u32 {
    (splitmix64(key ^ splitmix64(step as u64 ^ 0xD1B5_4A32_D192_ED03)) >> 32) as u32
}

/// A sampled token and its log-prob (see the module doc for greedy).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampled {
    pub token: u32,
    pub logprob: f32,
}

/// Draws one token from `logits[V]` with the 32-bit `draw` (see the module doc). `banned` tokens
/// (stop ids before `min_new_tokens`) get probability 0; at least one token must stay allowed.
/// The same arithmetic as the device op, so host and device agree.
pub fn sample(logits: &[f32], params: &SamplingParams, banned: &[u32], draw: u32) -> Sampled {
    let (token, logprob) = sample_row(logits, params.temperature, params.filter(), draw, banned);
    Sampled { token, logprob }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOGITS: [f32; 6] = [1.0, 0.5, -0.3, 2.0, 0.0, -1.0];

    fn softmax(z: &[f64]) -> Vec<f64> {
        let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = z.iter().map(|x| (x - m).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|x| x / s).collect()
    }

    /// Draws `n` tokens and returns counts per token plus the log-probs reported for each token.
    fn draw_many(params: &SamplingParams, n: usize, seed: u64) -> (Vec<usize>, Vec<Option<f32>>) {
        let key = sample_key(seed, 0);
        let mut counts = vec![0; LOGITS.len()];
        let mut lps = vec![None; LOGITS.len()];
        for t in 0..n {
            let s = sample(&LOGITS, params, &[], draw(key, t));
            counts[s.token as usize] += 1;
            lps[s.token as usize] = Some(s.logprob);
        }
        (counts, lps)
    }

    /// Pearson chi-square statistic of `counts` against probabilities `p` (cells with p = 0 must
    /// have count 0).
    fn chi_square(counts: &[usize], p: &[f64]) -> f64 {
        let n: usize = counts.iter().sum();
        counts
            .iter()
            .zip(p)
            .filter(|(_, &p)| p > 0.0)
            .map(|(&c, &p)| {
                let e = p * n as f64;
                (c as f64 - e).powi(2) / e
            })
            .sum()
    }

    // Upper 0.1% points of the chi-square distribution (tables): df 5 -> 20.515, df 2 -> 13.816,
    // df 1 -> 10.828. With a fixed seed the statistic is a fixed number; a wrong sampler gives
    // values in the hundreds at these sample sizes.
    const CHI2_999_DF5: f64 = 20.515;
    const CHI2_999_DF2: f64 = 13.816;
    const CHI2_999_DF1: f64 = 10.828;

    #[test]
    fn temperature_sampling_matches_softmax_and_reports_its_logprob() {
        let params = SamplingParams {
            temperature: 0.7,
            ..Default::default()
        };
        let (counts, lps) = draw_many(&params, 20_000, 7);
        let p = softmax(&LOGITS.iter().map(|&x| x as f64 / 0.7).collect::<Vec<_>>());
        let chi2 = chi_square(&counts, &p);
        assert!(chi2 < CHI2_999_DF5, "chi2 {chi2} counts {counts:?} p {p:?}");
        for (i, lp) in lps.iter().enumerate() {
            let lp = lp.expect("every token drawn at least once");
            assert!(
                (lp as f64 - p[i].ln()).abs() < 1e-5,
                "token {i}: {lp} vs {}",
                p[i].ln()
            );
        }
    }

    #[test]
    fn top_k_never_emits_a_filtered_token_and_renormalises() {
        let params = SamplingParams {
            temperature: 1.0,
            top_k: 3,
            ..Default::default()
        };
        let (counts, lps) = draw_many(&params, 20_000, 11);
        // The three largest logits are ids 3 (2.0), 0 (1.0), 1 (0.5).
        for filtered in [2, 4, 5] {
            assert_eq!(
                counts[filtered], 0,
                "top-k emitted filtered token {filtered}"
            );
        }
        let kept = softmax(&[1.0, 0.5, 2.0]);
        let mut p = vec![0.0; 6];
        p[0] = kept[0];
        p[1] = kept[1];
        p[3] = kept[2];
        let chi2 = chi_square(&counts, &p);
        assert!(chi2 < CHI2_999_DF2, "chi2 {chi2} counts {counts:?}");
        assert!((lps[3].unwrap() as f64 - p[3].ln()).abs() < 1e-5);
    }

    #[test]
    fn top_p_keeps_the_smallest_nucleus() {
        // softmax(LOGITS): id 3 ~0.47, id 0 ~0.17, id 1 ~0.10, ... ; p = 0.6 keeps {3, 0}.
        let full = softmax(&LOGITS.iter().map(|&x| x as f64).collect::<Vec<_>>());
        assert!(full[3] < 0.6 && full[3] + full[0] >= 0.6);
        let params = SamplingParams {
            temperature: 1.0,
            top_p: 0.6,
            ..Default::default()
        };
        let (counts, lps) = draw_many(&params, 20_000, 13);
        for filtered in [1, 2, 4, 5] {
            assert_eq!(
                counts[filtered], 0,
                "top-p emitted filtered token {filtered}"
            );
        }
        let z = full[3] + full[0];
        let mut p = vec![0.0; 6];
        p[3] = full[3] / z;
        p[0] = full[0] / z;
        let chi2 = chi_square(&counts, &p);
        assert!(chi2 < CHI2_999_DF1, "chi2 {chi2} counts {counts:?}");
        assert!((lps[0].unwrap() as f64 - p[0].ln()).abs() < 1e-5);
    }

    #[test]
    fn top_k_then_top_p_and_banned_tokens() {
        let params = SamplingParams {
            temperature: 0.5,
            top_k: 4,
            top_p: 0.9,
            ..Default::default()
        };
        let key = sample_key(3, 0);
        for t in 0..2000 {
            let s = sample(&LOGITS, &params, &[3], draw(key, t));
            // Id 3 is banned; the top-4 of the rest at T=0.5 are 0, 1, 4, 2 and top-p 0.9 drops 2.
            assert!([0, 1, 4].contains(&s.token), "emitted {}", s.token);
        }
    }

    #[test]
    fn greedy_is_argmax_with_model_logprob() {
        let s = sample(&LOGITS, &SamplingParams::greedy(1), &[], 0);
        assert_eq!(s.token, 3);
        let p = softmax(&LOGITS.iter().map(|&x| x as f64).collect::<Vec<_>>());
        assert!((s.logprob as f64 - p[3].ln()).abs() < 1e-6);
        let s = sample(&LOGITS, &SamplingParams::greedy(1), &[3], u32::MAX);
        assert_eq!(s.token, 0);
    }

    #[test]
    fn same_seed_same_tokens_different_index_different_stream() {
        let params = SamplingParams::default();
        let run = |seed, idx| {
            let key = sample_key(seed, idx);
            (0..64)
                .map(|t| sample(&LOGITS, &params, &[], draw(key, t)).token)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(5, 0), run(5, 0));
        assert_ne!(run(5, 0), run(5, 1));
        assert_ne!(run(5, 0), run(6, 0));
    }

    #[test]
    fn top_p_keeps_every_token_tied_at_its_boundary() {
        // 3000 equal logits: any nucleus boundary falls inside the tie, so all stay.
        let logits = vec![0.0f32; 3000];
        let params = SamplingParams {
            top_p: 0.5,
            ..Default::default()
        };
        let key = sample_key(1, 0);
        let mut seen_high = false;
        for t in 0..500 {
            let s = sample(&logits, &params, &[], draw(key, t));
            seen_high |= s.token >= 1500;
            assert!((s.logprob as f64 - (1.0f64 / 3000.0).ln()).abs() < 1e-5);
        }
        assert!(seen_high, "tied tokens past the nucleus mass were dropped");
    }

    #[test]
    fn a_large_nucleus_is_exact() {
        // 3000 distinct logits, id i has logit -i/10000: the nucleus for p = 0.5 is the prefix of
        // ids whose mass reaches half, computed here directly in f64.
        let logits: Vec<f32> = (0..3000).map(|i| -(i as f32) / 10000.0).collect();
        let w: Vec<f64> = logits.iter().map(|&x| (x as f64).exp()).collect();
        let total: f64 = w.iter().sum();
        let mut acc = 0.0;
        let n = w
            .iter()
            .position(|&x| {
                acc += x;
                acc >= 0.5 * total
            })
            .unwrap()
            + 1;
        assert!(n > 1024, "the nucleus should be large ({n})");
        let z: f64 = w[..n].iter().sum();
        let params = SamplingParams {
            top_p: 0.5,
            ..Default::default()
        };
        let key = sample_key(2, 0);
        for t in 0..500 {
            let s = sample(&logits, &params, &[], draw(key, t));
            assert!(
                (s.token as usize) < n,
                "emitted {} outside the nucleus of {n}",
                s.token
            );
            let want = (w[s.token as usize] / z).ln();
            assert!(
                (s.logprob as f64 - want).abs() < 1e-4,
                "{} vs {want}",
                s.logprob
            );
        }
    }
}
