//! Chat templates render exactly as transformers' `apply_chat_template` renders them
//! (fixtures/io/chat_templates.json, made by scripts/make_chat_template_fixture.py), including the
//! error a template raises.

use model::chat_template::{ChatMessage, ChatTemplate, SpecialTokens};
use serde_json::Value;
use std::path::Path;

#[test]
fn io_chat_templates_match_transformers() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/io/chat_templates.json");
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let s = &fixture["special"];
    let special = SpecialTokens {
        bos_token: s["bos_token"].as_str().map(str::to_string),
        eos_token: s["eos_token"].as_str().map(str::to_string),
        unk_token: s["unk_token"].as_str().map(str::to_string),
        pad_token: None,
    };
    let cases = fixture["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 18);
    for (i, case) in cases.iter().enumerate() {
        let name = case["template"].as_str().unwrap();
        let source = fixture["templates"][name].as_str().unwrap();
        let template = ChatTemplate::new(source, special.clone()).unwrap();
        let messages: Vec<ChatMessage> = serde_json::from_value(case["messages"].clone()).unwrap();
        let gen = case["add_generation_prompt"].as_bool().unwrap();
        let extra = match &case["tools"] {
            Value::Null => Value::Null,
            tools => serde_json::json!({ "tools": tools }),
        };
        let got = template.render_with(&messages, gen, extra);
        match (&case["text"], &case["error"]) {
            (Value::String(want), _) => {
                assert_eq!(
                    got.unwrap(),
                    *want,
                    "case {i} ({name}, generation prompt {gen})"
                )
            }
            (_, Value::String(err)) => {
                let e = format!("{:#}", got.unwrap_err());
                assert_eq!(
                    e,
                    format!("the chat template refused the conversation: {err}"),
                    "case {i}"
                );
            }
            _ => panic!("case {i} has neither text nor error"),
        }
    }
}

#[test]
fn io_tokenizer_keeps_a_broken_template_error_for_chat_callers() {
    let tmp = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/io/gguf/tiny_llama.gguf");
    model::gguf::import_gguf(&src, tmp.path(), kernels::DType::F32).unwrap();
    let cfg_path = tmp.path().join("tokenizer_config.json");
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["chat_template"] = Value::String("{% for m in messages %}{{ m.content }".into());
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    // Plain tokenization still works; rendering a chat says what is wrong.
    let tok = model::tokenizer::Tokenizer::from_dir(tmp.path()).unwrap();
    assert_eq!(tok.encode("hello", false).unwrap().len(), 1);
    let e = tok
        .apply_chat_template(&[ChatMessage::new("user", "x")], true)
        .unwrap_err();
    assert!(format!("{e:#}").contains("not valid Jinja"), "{e:#}");
    cfg.as_object_mut().unwrap().remove("chat_template");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let tok = model::tokenizer::Tokenizer::from_dir(tmp.path()).unwrap();
    let e = tok.chat_template().err().unwrap();
    assert!(format!("{e:#}").contains("no chat template"), "{e:#}");
}
