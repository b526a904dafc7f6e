//! `realign score` end to end: the binary on the committed random-init Llama fixture
//! (model/tests/fixtures/hf/llama_gqa), against the log-probs transformers computed for it, and on
//! bad inputs, each of which must end with one clear error and no panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("model/tests/fixtures/hf/llama_gqa")
}

fn realign(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_realign"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the realign binary runs")
}

/// Reads float32 tensors `names` from a safetensors file (8-byte header length, JSON header,
/// little-endian data), enough for the fixture outputs without another dependency.
fn read_f32(path: &Path, name: &str) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let entry = &header[name];
    assert_eq!(entry["dtype"], "F32", "{name}");
    let off = &entry["data_offsets"];
    let (a, b) = (
        off[0].as_u64().unwrap() as usize,
        off[1].as_u64().unwrap() as usize,
    );
    bytes[8 + n + a..8 + n + b]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn batch_json() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture().join("batch.json")).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn scores_token_and_text_lines_like_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let batch = batch_json();
    let seqs = batch["sequences"].as_array().unwrap();
    // The fixture's three sequences as token lines, then the sentence as a text line.
    let mut input = String::new();
    for s in seqs {
        input += &format!("{{\"tokens\": {s}}}\n");
    }
    input += "\n"; // blank lines are skipped
    input += &format!("{{\"text\": {}}}\n", batch["text"]);
    let in_path = dir.path().join("in.jsonl");
    let out_path = dir.path().join("out.jsonl");
    std::fs::write(&in_path, input).unwrap();

    let o = realign(&[
        "score",
        "--model",
        fixture().to_str().unwrap(),
        "--input",
        in_path.to_str().unwrap(),
        "--output",
        out_path.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<Value> = std::fs::read_to_string(&out_path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), seqs.len() + 1);

    // Token lines: the fixture's packed per-position log-probs, minus each sequence's last position.
    let outputs = fixture().join("outputs.safetensors");
    let (want_lp, want_ent) = (
        read_f32(&outputs, "logprobs"),
        read_f32(&outputs, "entropy"),
    );
    let mut start = 0;
    for (line, s) in lines.iter().zip(seqs) {
        let len = s.as_array().unwrap().len();
        assert_eq!(&line["tokens"], s);
        let (lp, ent) = (floats(&line["logprobs"]), floats(&line["entropy"]));
        assert_eq!(lp.len(), len - 1);
        assert!(max_abs(&lp, &want_lp[start..start + len - 1]) <= 1e-4);
        assert!(max_abs(&ent, &want_ent[start..start + len - 1]) <= 1e-4);
        start += len;
    }

    // Text line: tokenized as HF does, scored like transformers.
    let text = lines.last().unwrap();
    assert_eq!(text["tokens"], batch["text_tokens"]);
    let e = max_abs(
        &floats(&text["logprobs"]),
        &read_f32(&outputs, "text_logprobs"),
    );
    assert!(e <= 1e-4, "text log-probs differ by {e}");
    let e = max_abs(
        &floats(&text["entropy"]),
        &read_f32(&outputs, "text_entropy"),
    );
    assert!(e <= 1e-4, "text entropies differ by {e}");
}

/// Runs `score` on `input` (written to a file) and returns its stderr; it must fail cleanly.
fn fails_with(model: &Path, input: Option<&str>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let in_path = dir.path().join("in.jsonl");
    if let Some(text) = input {
        std::fs::write(&in_path, text).unwrap();
    }
    let o = realign(&[
        "score",
        "--model",
        model.to_str().unwrap(),
        "--input",
        in_path.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(
        o.status.code(),
        Some(1),
        "expected a clean failure, got {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(o.stdout.is_empty(), "nothing is written on error");
    err
}

#[test]
fn bad_inputs_end_with_one_clear_error() {
    let m = fixture();
    let err = fails_with(&m, None);
    assert!(err.contains("cannot read input file"), "{err}");

    let err = fails_with(&m, Some("{\"tokens\": [1, 2]}\n{\"tokens\": [1, 2\n"));
    assert!(
        err.contains("line 2") && err.contains("not valid JSON"),
        "{err}"
    );

    let err = fails_with(&m, Some("{\"tokens\": [1, 2, 128]}\n"));
    assert!(
        err.contains("line 1") && err.contains("token id 128"),
        "{err}"
    );

    let err = fails_with(&m, Some("{\"tokens\": [1, -2]}\n"));
    assert!(
        err.contains("line 1") && err.contains("\"tokens\"[1]"),
        "{err}"
    );

    let err = fails_with(&m, Some("{\"prompt\": \"hi\"}\n"));
    assert!(
        err.contains("line 1") && err.contains("\"tokens\" or \"text\""),
        "{err}"
    );

    let err = fails_with(&m, Some("{\"tokens\": []}\n"));
    assert!(err.contains("line 1") && err.contains("empty"), "{err}");

    let err = fails_with(Path::new("/nonexistent/model"), Some("{\"tokens\": [1]}\n"));
    assert!(err.contains("/nonexistent/model"), "{err}");

    // Text input needs a tokenizer; this copy of the model has none.
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(m.join(f), dir.path().join(f)).unwrap();
    }
    let err = fails_with(dir.path(), Some("{\"text\": \"hi\"}\n"));
    assert!(err.contains("line 1") && err.contains("tokenizer"), "{err}");

    // A config field we do not implement: a GELU MLP.
    let cfg = std::fs::read_to_string(m.join("config.json"))
        .unwrap()
        .replace("\"silu\"", "\"gelu\"");
    std::fs::write(dir.path().join("config.json"), cfg).unwrap();
    let err = fails_with(dir.path(), Some("{\"tokens\": [1, 2]}\n"));
    assert!(err.contains("hidden_act"), "{err}");
}
