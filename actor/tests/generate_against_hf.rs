//! Greedy generation through the whole engine (paged KV cache, continuous batching, prefix
//! sharing, preemption) equals transformers' greedy `generate` token for token, on tiny random
//! Llama (GQA) and Qwen2 (qkv bias, tied embeddings) checkpoints made by
//! scripts/make_generate_fixtures.py. CPU f32 always; CUDA f32 when a GPU is present.

use actor::{Completion, Engine, EngineConfig, FinishReason, KvBudget, Request, SamplingParams};
use kernels::testing::test_devices;
use kernels::{DType, Device};

mod common;
use common::{dir, fixture, gpu_lock, Fixture, MODELS};

fn greedy_requests(fx: &Fixture) -> Vec<Request> {
    fx.cases
        .iter()
        .map(|c| Request {
            tokens: c.prompt.clone(),
            sampling: SamplingParams {
                stop_token_ids: vec![fx.eos_token_id],
                ..SamplingParams::greedy(fx.max_new_tokens)
            },
            n: 1,
            seed: 0,
        })
        .collect()
}

fn check_against_hf(name: &str, fx: &Fixture, out: &[Completion], what: &str) {
    assert_eq!(out.len(), fx.cases.len());
    for (i, (c, want)) in out.iter().zip(&fx.cases).enumerate() {
        assert_eq!(
            c.tokens, want.greedy,
            "{name} {what}: prompt {i} differs from HF greedy"
        );
        let reason = if want.greedy.last() == Some(&fx.eos_token_id) {
            FinishReason::Stop
        } else {
            FinishReason::Length
        };
        assert_eq!(c.finish_reason, reason);
        for (a, b) in c.logprobs.iter().zip(&want.logprobs) {
            assert!((a - b).abs() < 1e-3, "{name} {what}: logprob {a} vs HF {b}");
        }
    }
}

fn engine(cfg: &model::ModelConfig, kv: KvBudget, share: bool) -> Engine {
    engine_with(cfg, kv, share, false)
}

/// `overlap`: the overlapped decode loop (`EngineConfig::overlap`) instead of the serial one.
fn engine_with(cfg: &model::ModelConfig, kv: KvBudget, share: bool, overlap: bool) -> Engine {
    Engine::new(
        cfg.clone(),
        EngineConfig {
            block_size: 4,
            kv_budget: kv,
            max_batch_tokens: 64,
            max_running: 8,
            share_prefixes: share,
            overlap,
            ..Default::default()
        },
    )
    .unwrap()
}

#[test]
fn greedy_batched_equals_hf_generate() {
    let _gpu = gpu_lock();
    for dev in test_devices() {
        for name in MODELS {
            let fx = fixture(name);
            let (cfg, params) = model::io::load_model(&dir(name), &dev, DType::F32).unwrap();
            // All prompts at once: mixed prompt lengths, continuous batching (the token budget of
            // 64 admits them over several steps); the overlapped loop too.
            for overlap in [true, false] {
                let eng = engine_with(&cfg, KvBudget::Bytes(1 << 24), true, overlap);
                let (out, stats) = eng
                    .generate_with_stats(&params, &greedy_requests(&fx))
                    .unwrap();
                let what = format!("batched on {dev}, overlap {overlap}");
                check_against_hf(name, &fx, &out, &what);
                assert_eq!(stats.preemptions, 0);
            }
            let eng = engine(&cfg, KvBudget::Bytes(1 << 24), true);
            let out = eng.generate(&params, greedy_requests(&fx)).unwrap();
            // Each prompt alone gives the same.
            for (i, r) in greedy_requests(&fx).into_iter().enumerate() {
                let alone = eng.generate(&params, vec![r]).unwrap();
                assert_eq!(
                    alone[0].tokens, out[i].tokens,
                    "{name} on {dev}: prompt {i} alone"
                );
            }
        }
    }
}

#[test]
fn greedy_with_a_tiny_kv_pool_preempts_and_still_equals_hf() {
    let _gpu = gpu_lock();
    for dev in test_devices() {
        for name in MODELS {
            let fx = fixture(name);
            let (cfg, params) = model::io::load_model(&dir(name), &dev, DType::F32).unwrap();
            // 18 blocks of 4 tokens: the longest sequence (40 + 24 = 64 tokens) needs 16.
            let per_block =
                2 * cfg.num_hidden_layers * 4 * cfg.num_key_value_heads * cfg.head_dim * 4;
            for overlap in [true, false] {
                let eng = engine_with(&cfg, KvBudget::Bytes(18 * per_block), true, overlap);
                let (out, stats) = eng
                    .generate_with_stats(&params, &greedy_requests(&fx))
                    .unwrap();
                assert!(
                    stats.preemptions > 0,
                    "{name}: the pool was meant to run out"
                );
                assert_eq!(stats.kv_blocks, 18);
                assert!(stats.peak_kv_blocks <= 18);
                let what = format!("preempted on {dev}, overlap {overlap}");
                check_against_hf(name, &fx, &out, &what);
            }
        }
    }
}

#[test]
fn sampled_groups_share_prefixes_and_equal_unshared() {
    let _gpu = gpu_lock();
    // CPU only: on the GPU, cuBLAS may pick another algorithm for another batch size, so sampled
    // tokens could legitimately differ in the last bits of the logits.
    let dev = Device::Cpu;
    let name = "qwen2_tied";
    let (cfg, params) = model::io::load_model(&dir(name), &dev, DType::F32).unwrap();
    let fx = fixture(name);
    let reqs: Vec<Request> = fx
        .cases
        .iter()
        .enumerate()
        .map(|(i, c)| Request {
            tokens: c.prompt.clone(),
            sampling: SamplingParams {
                temperature: 0.8,
                top_p: 0.95,
                top_k: 50,
                max_new_tokens: 6 + i * 3,
                ..Default::default()
            },
            n: 3,
            seed: 11 + i as u64,
        })
        .collect();
    let shared = engine(&cfg, KvBudget::Bytes(1 << 24), true);
    let (a, sa) = shared.generate_with_stats(&params, &reqs).unwrap();
    let unshared = engine(&cfg, KvBudget::Bytes(1 << 24), false);
    let (b, sb) = unshared.generate_with_stats(&params, &reqs).unwrap();
    assert_eq!(a, b);
    assert!(sa.block_copies > 0 && sb.block_copies == 0);
    assert!(sa.prefill_tokens < sb.prefill_tokens);
    // The samples of one prompt differ from each other (different RNG streams).
    assert_ne!(a[0].tokens, a[1].tokens);
    // Same seed, same tokens.
    let again = shared.generate(&params, reqs.clone()).unwrap();
    assert_eq!(a, again);
    // The overlapped loop gives the same samples (the draw of a token does not depend on it).
    for share in [true, false] {
        let eng = engine_with(&cfg, KvBudget::Bytes(1 << 24), share, true);
        assert_eq!(eng.generate(&params, reqs.clone()).unwrap(), a);
    }
}
