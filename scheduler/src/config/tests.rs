use super::*;

const BASE: &str = r#"
[run]
name = "t"

[model.init]
hidden_size = 32
intermediate_size = 64
num_hidden_layers = 2
num_attention_heads = 4

[data.synthetic]
task = "arithmetic"

[[stage]]
kind = "sft"
steps = 10
batch_size = 8

[[stage]]
kind = "rl"
algorithm = "grpo"
steps = 5
prompts_per_step = 4
samples_per_prompt = 4
mini_batch_size = 8
reward = { type = "numeric_match" }
"#;

fn err(text: &str, overrides: &[&str]) -> String {
    let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    match parse(text, &o).and_then(|c| validate(&c).map(|_| c)) {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn base_config_parses_and_validates() {
    let cfg = parse(BASE, &[]).unwrap();
    validate(&cfg).unwrap();
    assert_eq!(cfg.stages.len(), 2);
    assert_eq!(cfg.stages[1].name(), "grpo");
}

#[test]
fn unknown_keys_are_named_with_their_path() {
    let text = BASE.replace(
        "prompts_per_step = 4",
        "prompts_per_step = 4\nclip_epsilon = 0.3",
    );
    let e = err(&text, &[]);
    assert!(e.contains("stage[1]") && e.contains("clip_epsilon"), "{e}");
    let e = err(BASE, &["run.nmae=x"]);
    assert!(e.contains("run") && e.contains("nmae"), "{e}");
}

#[test]
fn overrides_set_nested_and_indexed_keys() {
    let o = vec![
        "stage[1].steps=9".to_string(),
        "stage.0.optim.lr=3e-4".to_string(),
        "run.device=cuda:1".to_string(),
    ];
    let cfg = parse(BASE, &o).unwrap();
    match (&cfg.stages[0], &cfg.stages[1]) {
        (StageConfig::Sft(s), StageConfig::Rl(r)) => {
            assert_eq!(s.optim.lr, 3e-4);
            assert_eq!(r.steps, 9);
        }
        _ => panic!("stage kinds changed"),
    }
    assert_eq!(cfg.run.device, "cuda:1");
    let e = err(BASE, &["stage[5].steps=1"]);
    assert!(e.contains("out of range"), "{e}");
}

#[test]
fn batch_sizes_that_do_not_divide_are_refused() {
    let e = err(BASE, &["stage[1].mini_batch_size=5"]);
    assert!(e.contains("mini_batch_size") && e.contains("16"), "{e}");
}

#[test]
fn grpo_needs_groups() {
    let e = err(
        BASE,
        &[
            "stage[1].samples_per_prompt=1",
            "stage[1].mini_batch_size=4",
        ],
    );
    assert!(e.contains("samples_per_prompt"), "{e}");
}

#[test]
fn missing_files_are_named() {
    let e = err(BASE, &["data.prompts=\"/nonexistent/prompts.jsonl\""]);
    assert!(
        e.contains("data.prompts") && e.contains("/nonexistent/prompts.jsonl"),
        "{e}"
    );
    let text = BASE.replace(
        "[model.init]\nhidden_size = 32\nintermediate_size = 64\nnum_hidden_layers = 2\nnum_attention_heads = 4\n",
        "[model]\npath = \"/nonexistent/model\"\n",
    );
    let e = err(&text, &[]);
    assert!(
        e.contains("model.path") && e.contains("/nonexistent/model"),
        "{e}"
    );
}

#[test]
fn model_and_tokenizer_mismatch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), r#"{"vocab_size": 10}"#).unwrap();
    std::fs::write(dir.path().join("model.safetensors"), b"").unwrap();
    std::fs::write(
        dir.path().join("tokenizer.json"),
        r#"{"model": {"vocab": {"a": 0, "b": 11}}, "added_tokens": []}"#,
    )
    .unwrap();
    let text = BASE.replace(
        "[model.init]\nhidden_size = 32\nintermediate_size = 64\nnum_hidden_layers = 2\nnum_attention_heads = 4\n",
        &format!("[model]\npath = {:?}\n", dir.path().to_str().unwrap()),
    );
    let e = err(&text, &[]);
    assert!(e.contains("do not match") && e.contains("11"), "{e}");
}

#[test]
fn resolved_config_round_trips_through_toml() {
    let text = BASE.replace(
        "reward = { type = \"numeric_match\" }",
        "reward = { type = \"model\", shaping = { normalize = true } }",
    );
    let text = text.replace("kind = \"sft\"", "kind = \"rm\"");
    let cfg = parse(&text, &[]).unwrap();
    let out = toml::to_string(&cfg).unwrap();
    let back = parse(&out, &[]).unwrap();
    assert_eq!(toml::to_string(&back).unwrap(), out);
    assert!(out.contains("type = \"model\""), "{out}");
    let rule = toml::to_string(&parse(BASE, &[]).unwrap()).unwrap();
    assert!(rule.contains("numeric_match"), "{rule}");
}

#[test]
fn policy_pairs_need_two_samples_and_cross_share_in_range() {
    let rm = r#"
[[stage]]
kind = "rm"
steps = 5
batch_size = 4
"#;
    let text = format!("{BASE}{rm}policy_pairs = {{ prompts = 10, samples_per_prompt = 1 }}\n");
    let e = err(&text, &[]);
    assert!(
        e.contains("stage[2].policy_pairs.samples_per_prompt"),
        "{e}"
    );
    let e = err(&format!("{BASE}{rm}cross_prompt_pairs = 1.5\n"), &[]);
    assert!(e.contains("stage[2].cross_prompt_pairs"), "{e}");
}

#[test]
fn critic_init_is_checked() {
    let e = err(
        BASE,
        &[
            "stage[1].algorithm=\"ppo\"",
            "stage[1].critic_init=\"value\"",
        ],
    );
    assert!(e.contains("stage[1].critic_init"), "{e}");
}

#[test]
fn bf16_needs_a_gpu() {
    let e = err(BASE, &["run.dtype=\"bf16\""]);
    assert!(e.contains("run.dtype") && e.contains("cpu"), "{e}");
}
