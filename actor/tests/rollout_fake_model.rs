//! The rollout loop (scheduler, block manager, sampling) on the fake model, whose logits depend on
//! the whole sequence as read back through the block tables: any paging mistake changes tokens.

use actor::fake_model::FakeModel;
use actor::{run_rollout, Completion, FinishReason, Request, RolloutConfig, SamplingParams};

const VOCAB: usize = 48;

fn cfg(num_blocks: usize, block_size: usize) -> RolloutConfig {
    RolloutConfig {
        block_size,
        num_blocks,
        max_batch_tokens: 64,
        max_running: 16,
        share_prefixes: true,
        overlap: true,
    }
}

/// Requests with mixed prompt and output lengths, some sampled, some greedy, some with n > 1.
fn mixed_requests() -> Vec<Request> {
    (0..9)
        .map(|i| {
            let len = 1 + (i * 7) % 23;
            let tokens = (0..len)
                .map(|j| ((i * 31 + j * 17) % VOCAB) as u32)
                .collect();
            let sampling = SamplingParams {
                temperature: if i % 3 == 0 { 0.0 } else { 0.9 },
                top_k: if i % 4 == 1 { 10 } else { 0 },
                top_p: if i % 4 == 2 { 0.8 } else { 1.0 },
                max_new_tokens: 3 + (i * 5) % 19,
                min_new_tokens: if i % 4 == 2 { 2 } else { 0 },
                stop_token_ids: if i % 2 == 0 { vec![7] } else { vec![] },
            };
            Request {
                tokens,
                sampling,
                n: 1 + i % 3,
                seed: 100 + i as u64,
            }
        })
        .collect()
}

fn run(reqs: &[Request], cfg: &RolloutConfig) -> (Vec<Completion>, actor::RolloutStats) {
    let mut model = FakeModel::new(VOCAB, 4096);
    let out = run_rollout(&mut model, reqs, cfg).expect("rollout");
    assert_eq!(model.allocated_blocks, 0, "the KV cache must be released");
    out
}

#[test]
fn continuous_batching_equals_each_request_alone() {
    let reqs = mixed_requests();
    let (batched, stats) = run(&reqs, &cfg(256, 4));
    assert_eq!(batched.len(), reqs.iter().map(|r| r.n).sum::<usize>());
    for (i, r) in reqs.iter().enumerate() {
        let (alone, _) = run(std::slice::from_ref(r), &cfg(256, 4));
        let mine: Vec<_> = batched.iter().filter(|c| c.request == i).collect();
        assert_eq!(mine.len(), alone.len());
        for (a, b) in mine.iter().zip(&alone) {
            assert_eq!(a.tokens, b.tokens, "request {i} sample {}", a.sample);
            assert_eq!(a.logprobs, b.logprobs);
            assert_eq!(a.finish_reason, b.finish_reason);
        }
    }
    assert_eq!(stats.preemptions, 0);
    assert!(stats.peak_kv_blocks > 0 && stats.peak_kv_blocks <= 256);
    // One step per generated token would mean no batching happened at all.
    assert!(stats.steps < batched.iter().map(|c| c.tokens.len()).sum::<usize>());
}

#[test]
fn prefix_shared_groups_equal_unshared() {
    let reqs = mixed_requests();
    let (shared, s1) = run(&reqs, &cfg(256, 4));
    let unshared_cfg = RolloutConfig {
        share_prefixes: false,
        ..cfg(256, 4)
    };
    let (unshared, s2) = run(&reqs, &unshared_cfg);
    assert_eq!(shared, unshared);
    assert!(
        s1.block_copies > 0,
        "groups with partial last blocks must copy on write"
    );
    assert!(
        s1.prefill_tokens < s2.prefill_tokens,
        "sharing prefills each prompt once"
    );
    assert_eq!(s2.block_copies, 0);
}

#[test]
fn running_out_of_blocks_preempts_and_finishes_correctly() {
    let reqs = mixed_requests();
    let (reference, _) = run(&reqs, &cfg(256, 4));
    // 14 blocks of 4 tokens: the longest sequence needs 11, so everything fits alone, but the
    // batch does not.
    let (tight, stats) = run(&reqs, &cfg(14, 4));
    assert!(stats.preemptions > 0, "the pool was meant to run out");
    assert!(stats.peak_kv_blocks <= 14);
    assert_eq!(tight, reference);
}

#[test]
fn finish_reasons_and_min_new_tokens() {
    let prompt: Vec<u32> = vec![1, 2, 3];
    let mut model = FakeModel::new(VOCAB, 4096);
    // Greedy reference to find which token would come first.
    let first = {
        let (c, _) = run(
            &[Request {
                tokens: prompt.clone(),
                sampling: SamplingParams::greedy(5),
                n: 1,
                seed: 0,
            }],
            &cfg(64, 4),
        );
        c[0].tokens.clone()
    };
    // Stop on the first greedy token: one token, reason stop, stop token kept.
    let stop = SamplingParams {
        stop_token_ids: vec![first[0]],
        ..SamplingParams::greedy(5)
    };
    let req = |s: SamplingParams| Request {
        tokens: prompt.clone(),
        sampling: s,
        n: 1,
        seed: 0,
    };
    let (c, _) = run_rollout(&mut model, &[req(stop.clone())], &cfg(64, 4)).unwrap();
    assert_eq!(c[0].tokens, vec![first[0]]);
    assert_eq!(c[0].finish_reason, FinishReason::Stop);
    // With min_new_tokens = 2 the stop token is banned for two tokens.
    let min2 = SamplingParams {
        min_new_tokens: 2,
        ..stop
    };
    let (c, _) = run_rollout(&mut model, &[req(min2)], &cfg(64, 4)).unwrap();
    assert!(c[0].tokens.len() >= 3 || c[0].finish_reason == FinishReason::Length);
    assert!(!c[0].tokens[..2].contains(&first[0]));
    // Length.
    assert_eq!(first.len(), 5);
    // The model's context bounds generation too.
    let mut short = FakeModel::new(VOCAB, 6);
    let (c, _) = run_rollout(&mut short, &[req(SamplingParams::greedy(50))], &cfg(64, 4)).unwrap();
    assert_eq!(c[0].tokens.len(), 3);
    assert_eq!(c[0].finish_reason, FinishReason::Length);
}

#[test]
fn a_sequence_larger_than_the_pool_ends_cache_full_without_crashing() {
    let reqs = vec![
        Request {
            tokens: vec![1; 5],
            sampling: SamplingParams::greedy(40),
            n: 1,
            seed: 0,
        },
        Request {
            tokens: vec![2; 30],
            sampling: SamplingParams::greedy(4),
            n: 1,
            seed: 0,
        },
    ];
    // 4 blocks of 4 tokens = 16 tokens.
    let (c, _) = run(&reqs, &cfg(4, 4));
    assert_eq!(c[0].finish_reason, FinishReason::CacheFull);
    assert_eq!(c[0].tokens.len(), 16 - 5 + 1);
    assert_eq!(c[1].finish_reason, FinishReason::CacheFull);
    assert!(c[1].tokens.is_empty());
}

#[test]
fn bad_requests_are_clear_errors() {
    let mut model = FakeModel::new(VOCAB, 4096);
    let bad_token = Request {
        tokens: vec![VOCAB as u32],
        sampling: SamplingParams::greedy(1),
        n: 1,
        seed: 0,
    };
    let e = run_rollout(&mut model, &[bad_token], &cfg(8, 4)).unwrap_err();
    assert!(format!("{e:#}").contains("outside the vocabulary"), "{e:#}");
    let bad_p = Request {
        tokens: vec![1],
        sampling: SamplingParams {
            top_p: 0.0,
            ..Default::default()
        },
        n: 1,
        seed: 0,
    };
    let e = run_rollout(&mut model, &[bad_p], &cfg(8, 4)).unwrap_err();
    assert!(format!("{e:#}").contains("top_p"), "{e:#}");
}

/// Upper 0.1% point of chi-square with 7 degrees of freedom (tables): 24.322.
const CHI2_999_DF7: f64 = 24.322;

#[test]
fn sampled_first_tokens_follow_the_model_softmax() {
    // 8-token vocabulary; 8000 samples of one prompt (one shared prefill), one token each.
    let mut model = FakeModel::new(8, 64);
    let prompt = vec![3, 1, 4];
    let logits = model.logits_of(&prompt);
    let req = Request {
        tokens: prompt,
        sampling: SamplingParams {
            temperature: 1.0,
            max_new_tokens: 1,
            ..Default::default()
        },
        n: 8000,
        seed: 42,
    };
    let cfg = RolloutConfig {
        max_running: 8000,
        ..cfg(9000, 4)
    };
    let (c, _) = run_rollout(&mut model, &[req], &cfg).unwrap();
    let m = logits.iter().cloned().fold(f32::MIN, f32::max) as f64;
    let w: Vec<f64> = logits.iter().map(|&x| (x as f64 - m).exp()).collect();
    let z: f64 = w.iter().sum();
    let mut counts = [0usize; 8];
    for s in &c {
        counts[s.tokens[0] as usize] += 1;
        let p = w[s.tokens[0] as usize] / z;
        assert!((s.logprobs[0] as f64 - p.ln()).abs() < 1e-5);
    }
    let chi2: f64 = (0..8)
        .map(|v| {
            let e = w[v] / z * 8000.0;
            (counts[v] as f64 - e).powi(2) / e
        })
        .sum();
    assert!(chi2 < CHI2_999_DF7, "chi2 {chi2}, counts {counts:?}");
}

/// The mixed requests plus two that exercise the host-sampling path (more stop ids than the
/// device sampler bans, while `min_new_tokens` holds them back) and a greedy group with a common
/// stop token, so that stops land mid-step.
fn overlap_requests() -> Vec<Request> {
    let mut reqs = mixed_requests();
    let many_stops: Vec<u32> = (20..40).collect();
    for (i, temperature) in [(0usize, 0.0f32), (1, 1.0)] {
        reqs.push(Request {
            tokens: vec![5, 9, 2, i as u32],
            sampling: SamplingParams {
                temperature,
                max_new_tokens: 12,
                min_new_tokens: 4,
                stop_token_ids: many_stops.clone(),
                ..Default::default()
            },
            n: 2,
            seed: 900 + i as u64,
        });
    }
    reqs.push(Request {
        tokens: vec![11, 3],
        sampling: SamplingParams {
            temperature: 1.3,
            max_new_tokens: 20,
            stop_token_ids: vec![1, 2, 3, 4, 5],
            ..Default::default()
        },
        n: 4,
        seed: 77,
    });
    reqs
}

#[test]
fn overlapped_loop_equals_serial_loop() {
    let reqs = overlap_requests();
    let serial = |c: RolloutConfig| RolloutConfig {
        overlap: false,
        ..c
    };
    let unshared = |c: RolloutConfig| RolloutConfig {
        share_prefixes: false,
        ..c
    };
    let mut discarded = 0;
    let mut drains = 0;
    // Roomy pool, shared and unshared; a pool so tight that it preempts.
    for c in [
        cfg(256, 4),
        unshared(cfg(256, 4)),
        cfg(14, 4),
        unshared(cfg(14, 4)),
    ] {
        let (a, sa) = run(&reqs, &serial(c));
        let (b, sb) = run(&reqs, &c);
        assert_eq!(b, a, "overlapped vs serial ({c:?})");
        assert_eq!(sa.discarded_tokens, 0);
        assert_eq!(sa.drains, 0);
        assert_eq!(sb.preemptions > 0, c.num_blocks == 14);
        discarded += sb.discarded_tokens;
        drains += sb.drains;
    }
    assert!(discarded > 0, "no stop was seen one step late");
    assert!(drains > 0, "the tight pool never made the loop drain");
    // Each request alone, overlapped, gives the same as in the batch.
    let (batched, _) = run(&reqs, &cfg(256, 4));
    for (i, r) in reqs.iter().enumerate() {
        let (alone, _) = run(std::slice::from_ref(r), &cfg(256, 4));
        let mine: Vec<_> = batched.iter().filter(|c| c.request == i).cloned().collect();
        let alone: Vec<_> = alone
            .into_iter()
            .map(|c| Completion { request: i, ..c })
            .collect();
        assert_eq!(mine, alone, "request {i}");
    }
}

#[test]
fn overlapped_loop_respects_every_limit() {
    // Lengths: max_new_tokens and the model's context end a sequence without an extra step; a
    // stop token ends it with the stop kept; the host-sampled rows never emit a banned stop.
    let reqs = overlap_requests();
    let (c, _) = run(&reqs, &cfg(256, 4));
    for comp in &c {
        let r = &reqs[comp.request];
        let s = &r.sampling;
        assert_eq!(comp.tokens.len(), comp.logprobs.len());
        assert!(comp.tokens.len() <= s.max_new_tokens);
        let stops = |t: &u32| s.stop_token_ids.contains(t);
        let early = comp.tokens.len().saturating_sub(1);
        assert!(!comp.tokens[..early].iter().any(stops), "{comp:?}");
        let head = s.min_new_tokens.min(comp.tokens.len());
        assert!(!comp.tokens[..head].iter().any(stops), "{comp:?}");
        match comp.finish_reason {
            FinishReason::Stop => assert!(stops(comp.tokens.last().unwrap())),
            FinishReason::Length => assert_eq!(comp.tokens.len(), s.max_new_tokens),
            FinishReason::CacheFull => panic!("the pool is roomy"),
        }
    }
    let mut short = FakeModel::new(VOCAB, 6);
    let req = Request {
        tokens: vec![1, 2, 3],
        sampling: SamplingParams::greedy(50),
        n: 3,
        seed: 0,
    };
    let (c, stats) = run_rollout(&mut short, &[req], &cfg(64, 4)).unwrap();
    for comp in &c {
        assert_eq!(comp.tokens.len(), 3);
        assert_eq!(comp.finish_reason, FinishReason::Length);
    }
    assert_eq!(stats.discarded_tokens, 0, "length limits are known ahead");
}
