//! The fused decode attention (`EngineConfig::fused_attention`: each paged decode step's q/k/v
//! epilogue folded into the tensor-core paged attention kernel) gives the rollout of the two ops
//! it replaces: identical tokens and log-prob bits, op by op and as CUDA graphs, serial and
//! overlapped. The model is random bf16 weights at head dim 64 with grouped kv heads and q/k/v
//! biases (Qwen2 layout), so the steps really take the tensor-core kernel (the HF fixtures' head
//! dim 16 does not), with contexts long enough for several partitions. GPU only; without a GPU
//! there is nothing to run (`REALIGN_REQUIRE_GPU=1` makes that a failure).

use actor::{Completion, EngineConfig, Request, SamplingParams};
use kernels::testing::test_devices;
use kernels::DType;
use model::{ModelConfig, Params};

mod common;
use common::{gpu_lock, qwen2_d64, rollout_with};

/// Prompts of 3 to ~330 tokens, greedy and sampled (T 0.9, n 2), 40 new tokens each.
fn requests() -> Vec<Request> {
    let lens = [3usize, 17, 64, 129, 200, 333];
    let prompt = |len: usize, k: usize| (0..len).map(|i| ((i * 31 + k * 7) % 509) as u32).collect();
    let greedy = lens.iter().enumerate().map(|(k, &l)| Request {
        tokens: prompt(l, k),
        sampling: SamplingParams::greedy(40),
        n: 1,
        seed: 0,
    });
    let sampled = lens.iter().enumerate().map(|(k, &l)| Request {
        tokens: prompt(l, k + 10),
        sampling: SamplingParams {
            temperature: 0.9,
            max_new_tokens: 40,
            ..Default::default()
        },
        n: 2,
        seed: 5 + k as u64,
    });
    greedy.chain(sampled).collect()
}

fn rollout(
    cfg: &ModelConfig,
    params: &Params,
    graphs: bool,
    overlap: bool,
    fused: bool,
) -> Vec<Completion> {
    let engine = EngineConfig {
        cuda_graphs: graphs,
        overlap,
        fused_attention: fused,
        ..Default::default()
    };
    rollout_with(cfg, params, requests(), engine)
}

#[test]
fn fused_decode_attention_gives_the_same_rollout() {
    let _gpu = gpu_lock();
    if actor::engine::fused_attention_env().is_some() {
        // REALIGN_DECODE_ATTN forces one path for every engine: nothing to compare.
        eprintln!("skipped: REALIGN_DECODE_ATTN is set");
        return;
    }
    for dev in test_devices().into_iter().filter(|d| d.is_cuda()) {
        let cfg = qwen2_d64();
        let params = Params::init(&cfg, 3, &dev, DType::BF16).unwrap();
        for (graphs, overlap) in [(false, false), (true, false), (true, true)] {
            let split = rollout(&cfg, &params, graphs, overlap, false);
            let fused = rollout(&cfg, &params, graphs, overlap, true);
            let what = format!("graphs {graphs} overlap {overlap}");
            assert_eq!(split.len(), fused.len(), "{what}");
            for (a, b) in split.iter().zip(&fused) {
                assert_eq!(
                    a.tokens, b.tokens,
                    "{what}: request {} sample {}",
                    a.request, a.sample
                );
                let bits =
                    |c: &Completion| c.logprobs.iter().map(|p| p.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(a),
                    bits(b),
                    "{what}: log-probs of request {} sample {}",
                    a.request,
                    a.sample
                );
            }
            // The rollouts did decode past the prompts (40 tokens each, no stop tokens).
            assert!(split.iter().all(|c| c.tokens.len() == 40), "{what}");
        }
    }
}
