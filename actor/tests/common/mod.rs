//! The generation fixtures shared by the actor's integration tests: tiny random checkpoints and
//! transformers' greedy `generate` outputs, made by scripts/make_generate_fixtures.py.

// Each test binary compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Deserialize)]
pub struct Fixture {
    pub max_new_tokens: usize,
    pub eos_token_id: u32,
    pub cases: Vec<Case>,
}

#[derive(Deserialize)]
pub struct Case {
    pub prompt: Vec<u32>,
    pub greedy: Vec<u32>,
    pub logprobs: Vec<f32>,
}

pub const MODELS: [&str; 2] = ["llama_gqa", "qwen2_tied"];

/// The fixture folder: beside this crate's sources, or (for test binaries carried to another
/// machine and run from the repository root) `actor/tests/fixtures` under the working directory.
pub fn dir(name: &str) -> PathBuf {
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/generate");
    let base = if built.exists() {
        built
    } else {
        PathBuf::from("actor/tests/fixtures/generate")
    };
    base.join(name)
}

pub fn fixture(name: &str) -> Fixture {
    let text = std::fs::read_to_string(dir(name).join("greedy.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Serialises the tests of one binary: every realign op queues on the device's single stream, and
/// a decode step that one test thread records into a CUDA graph would also record (or break on)
/// whatever another test thread queues on that stream meanwhile. Seen on the H200: concurrent
/// graphed rollouts failed with CUDA_ERROR_INVALID_VALUE reported in an unrelated op.
pub fn gpu_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// C 256, F 512, 2 layers, 4 query / 2 kv heads (D 64: the GPU's tensor-core decode attention),
/// V 512, q/k/v biases (Qwen2); weights std 0.2 so that the attention is far from uniform (a
/// wrong query or key row changes the tokens).
pub fn qwen2_d64() -> model::ModelConfig {
    let mut c = model::ModelConfig::new(model::Arch::Qwen2, 256, 512, 2, 4, 2, 512);
    c.max_position_embeddings = 4096;
    c.initializer_range = 0.2;
    c.tie_word_embeddings = true;
    c
}

/// `requests` through an engine with a 64 MiB KV pool and the rest of `engine`'s settings.
pub fn rollout_with(
    cfg: &model::ModelConfig,
    params: &model::Params,
    requests: Vec<actor::Request>,
    engine: actor::EngineConfig,
) -> Vec<actor::Completion> {
    let engine = actor::Engine::new(
        cfg.clone(),
        actor::EngineConfig {
            kv_budget: actor::KvBudget::Bytes(64 << 20),
            ..engine
        },
    )
    .unwrap();
    engine.generate(params, requests).unwrap()
}
