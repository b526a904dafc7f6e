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
