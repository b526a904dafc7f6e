//! Packing, micro-batches, PPO mini-batches and data-parallel partitions; N thread-ranks with
//! micro-batches must give the same loss, gradients and metrics as one rank with one batch.

mod common;

use std::collections::BTreeMap;

use common::{assert_close, assert_close1, randn, rng};
use learner::batch::{
    balance_by_tokens, minibatch_schedule, pack, rank_loads, split_by_token_budget, Field,
    MiniBatchConfig, PackedBatch, Sequence, NO_TARGET,
};
use learner::objectives::{policy_loss, Normaliser, PolicyBatch, PolicyLossConfig};
use learner::Metrics;
use rand::Rng;

#[test]
fn pack_hand_computed() {
    // Sequence 0: prompt [10, 11], response [12]; sequence 1: prompt [20], response [21].
    // Row i predicts token i+1 of its own sequence:
    //   tokens    [10, 11, 12, 20, 21]
    //   positions [ 0,  1,  2,  0,  1]
    //   targets   [11, 12,  -, 21,  -]
    //   loss mask [ 0,  1,  0,  1,  0]   (targets 12 and 21 are the response tokens)
    //   advantage [ 0, .5,  0, .7,  0]   (response token j sits on row prompt_len - 1 + j)
    let a = Sequence::new(vec![10, 11, 12], 2).with(Field::Advantages, vec![0.5]);
    let b = Sequence::new(vec![20, 21], 1).with(Field::Advantages, vec![0.7]);
    let p = pack(&[&a, &b]).unwrap();
    assert_eq!(p.tokens, vec![10, 11, 12, 20, 21]);
    assert_eq!(p.positions, vec![0, 1, 2, 0, 1]);
    assert_eq!(p.targets, vec![11, 12, NO_TARGET, 21, NO_TARGET]);
    assert_eq!(p.loss_mask, vec![0.0, 1.0, 0.0, 1.0, 0.0]);
    assert_eq!(p.cu_seqlens, vec![0, 3, 5]);
    assert_eq!(
        p.field(Field::Advantages).unwrap(),
        &[0.0, 0.5, 0.0, 0.7, 0.0]
    );
    assert!(p
        .field(Field::Returns)
        .unwrap_err()
        .to_string()
        .contains("Returns"));
    // Field lengths must match the response; prompts must be non-empty.
    let bad = Sequence::new(vec![1, 2, 3], 1).with(Field::Advantages, vec![0.5]);
    assert!(pack(&[&bad])
        .unwrap_err()
        .to_string()
        .contains("Advantages"));
    assert!(pack(&[&Sequence::new(vec![1, 2], 0)]).is_err());
}

#[test]
fn token_budget_micro_batches_hand_computed() {
    // Budget 8, lengths [3, 5, 2, 4, 6]: 3+5 = 8 fits; 2+4 = 6, +6 = 12 > 8 -> [[0,1],[2,3],[4]].
    assert_eq!(
        split_by_token_budget(&[3, 5, 2, 4, 6], 8).unwrap(),
        vec![vec![0, 1], vec![2, 3], vec![4]]
    );
    let e = split_by_token_budget(&[3, 9], 8).unwrap_err().to_string();
    assert!(e.contains("sequence 1 has 9 tokens"), "{e}");
}

#[test]
fn minibatch_schedule_covers_each_pass_once_and_is_seeded() {
    let cfg = MiniBatchConfig {
        num_mini_batches: 3,
        epochs: 2,
        shuffle: true,
        seed: 42,
    };
    let s = minibatch_schedule(10, &cfg).unwrap();
    assert_eq!(s.len(), 6);
    for pass in s.chunks(3) {
        // 10 = 4 + 3 + 3, and every index exactly once per pass.
        assert_eq!(
            pass.iter().map(|m| m.len()).collect::<Vec<_>>(),
            vec![4, 3, 3]
        );
        let mut all: Vec<usize> = pass.concat();
        all.sort_unstable();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
    }
    assert_ne!(
        s[..3].concat(),
        s[3..].concat(),
        "the two passes must be shuffled differently"
    );
    assert_ne!(s[..3].concat(), (0..10).collect::<Vec<_>>());
    assert_eq!(
        s,
        minibatch_schedule(10, &cfg).unwrap(),
        "same seed, same schedule"
    );
    let other = minibatch_schedule(10, &MiniBatchConfig { seed: 43, ..cfg }).unwrap();
    assert_ne!(s, other);
    let plain = minibatch_schedule(
        4,
        &MiniBatchConfig {
            shuffle: false,
            num_mini_batches: 2,
            ..cfg
        },
    )
    .unwrap();
    assert_eq!(plain, vec![vec![0, 1], vec![2, 3], vec![0, 1], vec![2, 3]]);
    assert!(minibatch_schedule(2, &cfg).is_err());
}

#[test]
fn token_balanced_partition_hand_computed() {
    // Lengths [8,7,6,5,4,3,2,1] over 3 ranks, longest first to the least-loaded rank:
    //   8->r0 (8), 7->r1 (7), 6->r2 (6), 5->r2 (11), 4->r1 (11), 3->r0 (11),
    //   2->r0 (13; all tied at 11, lowest rank wins), 1->r1 (12; r1 and r2 tied at 11).
    let lens = [8, 7, 6, 5, 4, 3, 2, 1];
    let parts = balance_by_tokens(&lens, 3).unwrap();
    assert_eq!(parts, vec![vec![0, 5, 6], vec![1, 4, 7], vec![2, 3]]);
    assert_eq!(rank_loads(&lens, &parts), vec![13, 12, 11]);
    // Random lengths: every sequence once, and the max load within the LPT bound of the mean
    // (max <= mean + longest).
    let mut r = rng(9);
    let lens: Vec<usize> = (0..37).map(|_| r.random_range(1..200)).collect();
    let parts = balance_by_tokens(&lens, 4).unwrap();
    let mut all = parts.concat();
    all.sort_unstable();
    assert_eq!(all, (0..37).collect::<Vec<_>>());
    let loads = rank_loads(&lens, &parts);
    let mean = lens.iter().sum::<usize>() as f64 / 4.0;
    assert!((*loads.iter().max().unwrap() as f64) <= mean + *lens.iter().max().unwrap() as f64);
}

/// Random rollout sequences with all policy fields.
fn rollout(n: usize, seed: u64) -> Vec<Sequence> {
    let mut r = rng(seed);
    (0..n)
        .map(|_| {
            let p = r.random_range(1..6);
            let resp = r.random_range(1..12);
            let tokens: Vec<u32> = (0..p + resp).map(|_| r.random_range(0..100)).collect();
            let old: Vec<f32> = randn(&mut r, resp, 1.0)
                .iter()
                .map(|x| (*x - 2.0) as f32)
                .collect();
            let new: Vec<f32> = old
                .iter()
                .zip(randn(&mut r, resp, 0.3))
                .map(|(o, d)| o + d as f32)
                .collect();
            let adv: Vec<f32> = randn(&mut r, resp, 1.0).iter().map(|x| *x as f32).collect();
            // The "current" log-probs ride in the Values slot here: this test only needs a
            // fourth per-token array and the field is otherwise unused.
            Sequence::new(tokens, p)
                .with(Field::OldLogprob, old)
                .with(Field::Advantages, adv)
                .with(Field::Values, new)
        })
        .collect()
}

struct Part {
    loss: f64,
    grads: BTreeMap<usize, Vec<f32>>, // sequence index -> its rows' ∂loss/∂logp
    metrics: Metrics,
}

/// One rank: its sequences in micro-batches of at most `budget` tokens, normalised by `global`.
fn run_rank(seqs: &[Sequence], mine: &[usize], budget: usize, global: Normaliser) -> Part {
    let cfg = PolicyLossConfig {
        dual_clip: Some(3.0),
        ..Default::default()
    };
    let lens: Vec<usize> = mine.iter().map(|&i| seqs[i].tokens.len()).collect();
    let mut part = Part {
        loss: 0.0,
        grads: BTreeMap::new(),
        metrics: Metrics::new(),
    };
    for micro in split_by_token_budget(&lens, budget).unwrap() {
        let idx: Vec<usize> = micro.iter().map(|&k| mine[k]).collect();
        let refs: Vec<&Sequence> = idx.iter().map(|&i| &seqs[i]).collect();
        let b: PackedBatch = pack(&refs).unwrap();
        let out = policy_loss(
            &PolicyBatch {
                logprob: b.field(Field::Values).unwrap(),
                old_logprob: b.field(Field::OldLogprob).unwrap(),
                advantages: b.field(Field::Advantages).unwrap(),
                mask: &b.loss_mask,
                cu_seqlens: &b.cu_seqlens,
                entropy: None,
                ref_logprob: None,
                behaviour_logprob: None,
            },
            &cfg,
            &global,
        )
        .unwrap();
        part.loss += out.loss as f64;
        part.metrics.merge(&out.metrics);
        for (k, &i) in idx.iter().enumerate() {
            let r = b.cu_seqlens[k]..b.cu_seqlens[k + 1];
            part.grads.insert(i, out.grad_logprob[r].to_vec());
        }
    }
    part
}

#[test]
fn thread_ranks_with_micro_batches_equal_one_rank() {
    let seqs = rollout(23, 11);
    let all: Vec<usize> = (0..seqs.len()).collect();
    let whole = pack(&seqs.iter().collect::<Vec<_>>()).unwrap();
    let global = Normaliser::count(&whole.loss_mask, &whole.cu_seqlens).unwrap();
    let one = run_rank(&seqs, &all, usize::MAX, global);

    let lens: Vec<usize> = seqs.iter().map(|s| s.tokens.len()).collect();
    let parts = balance_by_tokens(&lens, 3).unwrap();
    // Each rank counts its own tokens; the sum stands for the all-reduce.
    let counts: Vec<Normaliser> = parts
        .iter()
        .map(|p| {
            let refs: Vec<&Sequence> = p.iter().map(|&i| &seqs[i]).collect();
            let b = pack(&refs).unwrap();
            Normaliser::count(&b.loss_mask, &b.cu_seqlens).unwrap()
        })
        .collect();
    let reduced = counts.iter().fold(Normaliser::default(), |a, &b| a.plus(b));
    assert_eq!(reduced, global);
    let results: Vec<Part> = std::thread::scope(|s| {
        let handles: Vec<_> = parts
            .iter()
            .map(|p| s.spawn(|| run_rank(&seqs, p, 20, reduced)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let loss: f64 = results.iter().map(|p| p.loss).sum();
    assert_close1(loss, one.loss, 1e-5, "loss");
    let mut metrics = Metrics::new();
    for p in &results {
        metrics.merge(&p.metrics);
        for (i, g) in &p.grads {
            let want: Vec<f64> = one.grads[i].iter().map(|&x| x as f64).collect();
            let got: Vec<f64> = g.iter().map(|&x| x as f64).collect();
            assert_close(&got, &want, 1e-6, &format!("sequence {i}"));
        }
    }
    for (k, v) in one.metrics.values() {
        assert_close1(metrics.get(&k).unwrap(), v, 1e-5, &k);
    }
    assert!(one.metrics.get("actor/pg_clipfrac").unwrap() > 0.0);
}
