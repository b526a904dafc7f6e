//! Decode lanes (`EngineConfig::decode_lanes`: each wide decode step split into two to four row
//! blocks whose layers run side by side on as many streams of the GPU) give the rollout of the
//! unsplit step. On the CPU the blocks run one after the other and every step of two or more rows
//! is split: the completions are the same bits. On a GPU (steps of at least `LANE_MIN_ROWS` rows
//! split, op by op and as CUDA graphs, serial and overlapped) a GEMM of fewer rows may take another
//! cuBLAS algorithm, so the log-probs are compared to a tolerance and the tokens exactly (the
//! weights make the distributions peaked enough that no greedy choice is a near tie).

use actor::{
    Completion, Engine, EngineConfig, KvBudget, Request, SamplingParams, LANE_MIN_ROWS,
    MAX_DECODE_LANES,
};
use kernels::testing::test_devices;
use kernels::{DType, Device};
use model::{ModelConfig, Params};

mod common;
use common::{gpu_lock, qwen2_d64, rollout_with};

/// `prompts` prompts of 3 to ~200 tokens, half greedy, half sampled (T 0.9, n 2), 24 new tokens.
fn requests(prompts: usize) -> Vec<Request> {
    let prompt = |len: usize, k: usize| (0..len).map(|i| ((i * 31 + k * 7) % 509) as u32).collect();
    (0..prompts)
        .map(|k| {
            let len = 3 + (k * 37) % 200;
            let sampling = if k % 2 == 0 {
                SamplingParams::greedy(24)
            } else {
                SamplingParams {
                    temperature: 0.9,
                    max_new_tokens: 24,
                    ..Default::default()
                }
            };
            Request {
                tokens: prompt(len, k),
                sampling,
                n: 1 + k % 2,
                seed: 11 + k as u64,
            }
        })
        .collect()
}

fn rollout(
    cfg: &ModelConfig,
    params: &Params,
    requests: &[Request],
    graphs: bool,
    overlap: bool,
    lanes: usize,
) -> Vec<Completion> {
    let engine = EngineConfig {
        cuda_graphs: graphs,
        overlap,
        decode_lanes: lanes,
        ..Default::default()
    };
    rollout_with(cfg, params, requests.to_vec(), engine)
}

fn same(whole: &[Completion], split: &[Completion], tol: f32, what: &str) {
    assert_eq!(whole.len(), split.len(), "{what}");
    for (a, b) in whole.iter().zip(split) {
        let which = format!("{what}: request {} sample {}", a.request, a.sample);
        assert_eq!(a.tokens, b.tokens, "{which}");
        assert_eq!(a.finish_reason, b.finish_reason, "{which}");
        for (i, (x, y)) in a.logprobs.iter().zip(&b.logprobs).enumerate() {
            assert!(
                (x - y).abs() <= tol,
                "{which}: log-prob {i}: {x} unsplit, {y} in lanes"
            );
        }
    }
    // The rollouts did decode past the prompts (24 tokens each, no stop tokens).
    assert!(whole.iter().all(|c| c.tokens.len() == 24), "{what}");
}

#[test]
fn decode_lanes_give_the_same_rollout() {
    let _gpu = gpu_lock();
    if actor::engine::decode_lanes_env().is_some() {
        // REALIGN_DECODE_LANES forces one setting for every engine: nothing to compare.
        eprintln!("skipped: REALIGN_DECODE_LANES is set");
        return;
    }
    let cfg = qwen2_d64();
    for dev in test_devices() {
        match dev {
            Device::Cpu => {
                let params = Params::init(&cfg, 3, &dev, DType::F32).unwrap();
                let reqs = requests(6);
                let whole = rollout(&cfg, &params, &reqs, false, false, 1);
                for lanes in [2, 3, MAX_DECODE_LANES] {
                    let split = rollout(&cfg, &params, &reqs, false, false, lanes);
                    same(&whole, &split, 0.0, &format!("cpu, {lanes} lanes"));
                }
            }
            Device::Cuda(_) => {
                // 144 sequences (96 prompts, half sampled twice): the decode steps are wide
                // enough for every lane to get its share (LANE_MIN_ROWS / 2 rows or more), and
                // the chunked prefill makes the steps before it narrower (fewer lanes).
                let reqs = requests(96);
                let seqs: usize = reqs.iter().map(|r| r.n).sum();
                assert!(seqs >= MAX_DECODE_LANES * LANE_MIN_ROWS / 2);
                for (dtype, tol) in [(DType::F32, 1e-3), (DType::BF16, 0.05)] {
                    let params = Params::init(&cfg, 3, &dev, dtype).unwrap();
                    for (graphs, overlap) in [(false, false), (true, false), (true, true)] {
                        let whole = rollout(&cfg, &params, &reqs, graphs, overlap, 1);
                        for lanes in [2, MAX_DECODE_LANES] {
                            let split = rollout(&cfg, &params, &reqs, graphs, overlap, lanes);
                            let what = format!(
                                "gpu {dtype} graphs {graphs} overlap {overlap}, {lanes} lanes"
                            );
                            same(&whole, &split, tol, &what);
                        }
                    }
                }
            }
        }
    }
}

/// With a KV pool too small for every sequence at once, sequences are preempted and recomputed
/// between steps, so the decode steps' rows (and the split between the lanes) change as the
/// rollout goes: still the same completions (CPU, the same bits).
#[test]
fn decode_lanes_give_the_same_rollout_when_sequences_are_preempted() {
    if actor::engine::decode_lanes_env().is_some() {
        eprintln!("skipped: REALIGN_DECODE_LANES is set");
        return;
    }
    let cfg = qwen2_d64();
    let params = Params::init(&cfg, 3, &Device::Cpu, DType::F32).unwrap();
    let reqs = requests(6);
    let run = |lanes: usize| {
        let engine = Engine::new(
            cfg.clone(),
            EngineConfig {
                // 2 KiB of K/V a token (2 layers × 2 kv heads × D 64 × k, v × f32): 20 blocks of
                // 16 tokens, against ~55 for all nine sequences at their longest (the longest
                // alone needs 14).
                kv_budget: KvBudget::Bytes(20 * 16 * 2048),
                decode_lanes: lanes,
                ..Default::default()
            },
        )
        .unwrap();
        engine.generate_with_stats(&params, &reqs).unwrap()
    };
    let (whole, whole_stats) = run(1);
    assert!(whole_stats.preemptions > 0, "the pool must run out");
    for lanes in [2, MAX_DECODE_LANES] {
        let (split, split_stats) = run(lanes);
        assert_eq!(whole_stats.preemptions, split_stats.preemptions);
        same(
            &whole,
            &split,
            0.0,
            &format!("cpu, preempting, {lanes} lanes"),
        );
    }
}
