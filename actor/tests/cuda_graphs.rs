//! CUDA-graph decode steps (`EngineConfig::cuda_graphs`) give what op-by-op decoding gives: greedy
//! tokens equal to transformers' `generate` on the tiny fixture models, sampled groups equal to the
//! op-by-op run, greedy still equal to HF when a tiny KV pool forces preemption — and the graphs
//! were really replayed. The overlapped loop (`EngineConfig::overlap`: each step's input tokens
//! taken from the previous step's samples on the device, read back one step late) equals the
//! serial loop, graphed and op by op, and still equals HF greedy under preemption.
//! GPU only (f32 weights); on a machine without a GPU the test has nothing to run.

use actor::{Completion, Engine, EngineConfig, KvBudget, Request, SamplingParams};
use kernels::testing::test_devices;
use kernels::DType;

mod common;
use common::{dir, fixture, gpu_lock, Fixture, MODELS};

/// The fixture's prompts greedy, then each again sampled (T 0.8, n 3) with its own seed, then
/// with top-k 20 and top-p 0.9 (n 2).
fn requests(fx: &Fixture) -> Vec<Request> {
    let greedy = fx.cases.iter().map(|c| Request {
        tokens: c.prompt.clone(),
        sampling: SamplingParams {
            stop_token_ids: vec![fx.eos_token_id],
            ..SamplingParams::greedy(fx.max_new_tokens)
        },
        n: 1,
        seed: 0,
    });
    let sampled = fx.cases.iter().enumerate().map(|(i, c)| Request {
        tokens: c.prompt.clone(),
        sampling: SamplingParams {
            temperature: 0.8,
            max_new_tokens: fx.max_new_tokens,
            stop_token_ids: vec![fx.eos_token_id],
            ..Default::default()
        },
        n: 3,
        seed: 7 + i as u64,
    });
    // Top-k then top-p (sampled on the device since they moved into `sample_tokens`, so these
    // steps are graphed too).
    let filtered = fx.cases.iter().enumerate().map(|(i, c)| Request {
        tokens: c.prompt.clone(),
        sampling: SamplingParams {
            temperature: 1.0,
            top_k: 20,
            top_p: 0.9,
            max_new_tokens: fx.max_new_tokens,
            stop_token_ids: vec![fx.eos_token_id],
            ..Default::default()
        },
        n: 2,
        seed: 70 + i as u64,
    });
    greedy.chain(sampled).chain(filtered).collect()
}

fn engine(cfg: &model::ModelConfig, kv: KvBudget, graphs: bool) -> Engine {
    engine_with(cfg, kv, graphs, false)
}

/// Room for every request at once (one prefill step, no admission waits).
fn roomy(cfg: &model::ModelConfig, graphs: bool, overlap: bool) -> Engine {
    Engine::new(
        cfg.clone(),
        EngineConfig {
            block_size: 4,
            kv_budget: KvBudget::Bytes(1 << 24),
            max_batch_tokens: 4096,
            max_running: 64,
            share_prefixes: true,
            cuda_graphs: graphs,
            overlap,
            fused_attention: false,
            decode_lanes: 1,
        },
    )
    .unwrap()
}

/// `overlap`: the overlapped decode loop or the serial one.
fn engine_with(cfg: &model::ModelConfig, kv: KvBudget, graphs: bool, overlap: bool) -> Engine {
    Engine::new(
        cfg.clone(),
        EngineConfig {
            block_size: 4,
            kv_budget: kv,
            max_batch_tokens: 64,
            max_running: 16,
            share_prefixes: true,
            cuda_graphs: graphs,
            overlap,
            fused_attention: false,
            decode_lanes: 1,
        },
    )
    .unwrap()
}

fn same(a: &[Completion], b: &[Completion], what: &str) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!(
            x.tokens, y.tokens,
            "{what}: request {} sample {}",
            x.request, x.sample
        );
        for (p, q) in x.logprobs.iter().zip(&y.logprobs) {
            assert!((p - q).abs() < 1e-4, "{what}: logprob {p} vs {q}");
        }
    }
}

#[test]
fn graph_decode_equals_op_by_op_decode_and_hf() {
    let _gpu = gpu_lock();
    for dev in test_devices().into_iter().filter(|d| d.is_cuda()) {
        for name in MODELS {
            let fx = fixture(name);
            let (cfg, params) = model::io::load_model(&dir(name), &dev, DType::F32).unwrap();
            let reqs = requests(&fx);
            let kv = KvBudget::Bytes(1 << 24);
            let (plain, s0) = engine(&cfg, kv, false)
                .generate_with_stats(&params, &reqs)
                .unwrap();
            let (graphed, s1) = engine(&cfg, kv, true)
                .generate_with_stats(&params, &reqs)
                .unwrap();
            assert_eq!(s0.graph_replays, 0);
            assert!(
                s1.graph_replays > 0,
                "{name}: no decode step was replayed from a graph"
            );
            same(&graphed, &plain, &format!("{name} graphs vs op by op"));
            // The overlapped loop equals the serial one, graphed and op by op. Every sequence is
            // admitted in the first step (so that both loops prefill the same batch: another
            // batch size may round the logits differently); the decode batches differ only by the
            // overlapped loop's discarded rows.
            for graphs in [true, false] {
                let run = |overlap: bool| {
                    roomy(&cfg, graphs, overlap)
                        .generate_with_stats(&params, &reqs)
                        .unwrap()
                };
                let ((a, sa), (b, sb)) = (run(true), run(false));
                assert_eq!(sb.discarded_tokens, 0);
                assert_eq!(
                    sa.graph_replays > 0,
                    graphs,
                    "{name}: overlapped steps with their feed nodes were captured and replayed"
                );
                let what = format!("{name} overlapped vs serial (graphs {graphs})");
                same(&a, &b, &what);
                for (x, y) in a.iter().zip(&b) {
                    assert_eq!(x.finish_reason, y.finish_reason, "{what}");
                }
            }
            for (i, c) in fx.cases.iter().enumerate() {
                assert_eq!(
                    graphed[i].tokens, c.greedy,
                    "{name}: prompt {i} vs HF greedy"
                );
            }
            // A pool of 18 blocks of 4 tokens preempts (recomputed sequences go through prefill,
            // whose f32 rounding differs from decode's, so only the greedy tokens are compared).
            let per_block =
                2 * cfg.num_hidden_layers * 4 * cfg.num_key_value_heads * cfg.head_dim * 4;
            for overlap in [false, true] {
                let (tight, s2) = engine_with(&cfg, KvBudget::Bytes(18 * per_block), true, overlap)
                    .generate_with_stats(&params, &reqs)
                    .unwrap();
                assert!(s2.preemptions > 0, "{name}: the pool was meant to run out");
                for (i, c) in fx.cases.iter().enumerate() {
                    assert_eq!(
                        tight[i].tokens, c.greedy,
                        "{name}: preempted prompt {i} vs HF (overlap {overlap})"
                    );
                }
            }
        }
    }
}

/// bf16 weights (the rollout's dtype on a GPU; its decode products take the cuBLASLt route of
/// `kernels::cuda::blas` with fixed algorithms, also inside the captured graphs): two graphed
/// rollouts give identical tokens and log-probs, and graphs were replayed.
#[test]
fn bf16_graph_decode_repeats_exactly() {
    let _gpu = gpu_lock();
    for dev in test_devices().into_iter().filter(|d| d.is_cuda()) {
        for name in MODELS {
            let fx = fixture(name);
            let (cfg, params) = model::io::load_model(&dir(name), &dev, DType::BF16).unwrap();
            let reqs = requests(&fx);
            let kv = KvBudget::Bytes(1 << 24);
            let (a, s) = engine(&cfg, kv, true)
                .generate_with_stats(&params, &reqs)
                .unwrap();
            let (b, _) = engine(&cfg, kv, true)
                .generate_with_stats(&params, &reqs)
                .unwrap();
            assert!(
                s.graph_replays > 0,
                "{name}: no bf16 decode step was replayed"
            );
            for (x, y) in a.iter().zip(&b) {
                assert_eq!(x.tokens, y.tokens, "{name} bf16: request {}", x.request);
                let lp =
                    |c: &Completion| c.logprobs.iter().map(|p| p.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    lp(x),
                    lp(y),
                    "{name} bf16: log-probs of request {}",
                    x.request
                );
            }
        }
    }
}
