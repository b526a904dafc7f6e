//! Bad configs fail through the CLI before any work, with one sentence naming the problem and no
//! run folder left behind.

use std::path::Path;
use std::process::Command;

const GOOD: &str = r#"
[run]
name = "cli"

[model.init]
hidden_size = 16
intermediate_size = 32
num_hidden_layers = 1
num_attention_heads = 2

[data.synthetic]
task = "arithmetic"

[[stage]]
kind = "rl"
algorithm = "grpo"
steps = 2
prompts_per_step = 4
samples_per_prompt = 4
mini_batch_size = 8
reward = { type = "numeric_match" }
"#;

/// Runs `realign <cmd> CONFIG` in `dir`; returns (success, stderr).
fn realign(dir: &Path, cmd: &str, text: &str) -> (bool, String) {
    let cfg = dir.join("config.toml");
    std::fs::write(&cfg, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_realign"))
        .args([cmd, cfg.to_str().unwrap(), "--set"])
        .arg(format!(
            "run.output_dir={:?}",
            dir.join("runs").to_str().unwrap()
        ))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn fails_naming(text: &str, needles: &[&str]) {
    for cmd in ["check", "train"] {
        let dir = tempfile::tempdir().unwrap();
        let (ok, err) = realign(dir.path(), cmd, text);
        assert!(!ok, "{cmd} accepted a bad config");
        let line = err.lines().find(|l| l.starts_with("error:")).unwrap_or("");
        for n in needles {
            assert!(line.contains(n), "{cmd}: `{n}` not in {err:?}");
        }
        assert!(!dir.path().join("runs").exists(), "{cmd} started work");
    }
}

#[test]
fn check_accepts_a_good_config_and_prints_memory() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, GOOD).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_realign"))
        .args(["check", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("actor_gen") && text.contains("GB"), "{text}");
    assert!(text.contains("[run]"), "{text}");
}

#[test]
fn unknown_key() {
    fails_naming(
        &GOOD.replace("steps = 2", "steps = 2\nclip_epsilon = 0.3"),
        &["stage[0]", "clip_epsilon"],
    );
}

#[test]
fn missing_file() {
    fails_naming(
        &GOOD.replace(
            "[data.synthetic]",
            "[data]\nprompts = \"/nonexistent/p.jsonl\"\n[data.synthetic]",
        ),
        &["data.prompts", "/nonexistent/p.jsonl"],
    );
}

#[test]
fn batch_sizes_that_do_not_divide() {
    fails_naming(
        &GOOD.replace("mini_batch_size = 8", "mini_batch_size = 5"),
        &["mini_batch_size", "16"],
    );
}

#[test]
fn model_and_tokenizer_mismatch() {
    let model = tempfile::tempdir().unwrap();
    std::fs::write(model.path().join("config.json"), r#"{"vocab_size": 10}"#).unwrap();
    std::fs::write(model.path().join("model.safetensors"), b"").unwrap();
    std::fs::write(
        model.path().join("tokenizer.json"),
        r#"{"model": {"vocab": {"a": 0, "b": 11}}, "added_tokens": []}"#,
    )
    .unwrap();
    let text = GOOD.replace(
        "[model.init]\nhidden_size = 16\nintermediate_size = 32\nnum_hidden_layers = 1\nnum_attention_heads = 2\n",
        &format!("[model]\npath = {:?}\n", model.path().to_str().unwrap()),
    );
    fails_naming(&text, &["do not match", "11"]);
}
