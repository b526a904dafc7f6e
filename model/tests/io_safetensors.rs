//! Checkpoint I/O: our save/load round trip is bit-exact, checkpoints written by transformers load
//! (single file, bf16 score head, sharded index), and bad folders fail with errors naming the
//! tensor or file.
//!
//! Fixtures: model/tests/fixtures/io/, made by scripts/make_io_fixture.py. To check that
//! transformers loads what we save: `REALIGN_IO_SAVE_DIR=/tmp/x cargo test -p model --test
//! io_safetensors`, then `python scripts/make_io_fixture.py --check /tmp/x/*`.

use kernels::{DType, Device, Storage};
use model::config::{Arch, Head, ModelConfig};
use model::io::{load_model, load_params, save_model};
use model::params::Params;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/io")
        .join(name)
}

/// Bit patterns of every tensor, by name.
fn bits(p: &Params) -> Vec<(String, Vec<u32>)> {
    p.tensors()
        .into_iter()
        .map(|(n, t)| {
            let b = match t.storage() {
                Storage::CpuF32(v) => v.iter().map(|x| x.to_bits()).collect(),
                Storage::CpuBF16(v) => v.iter().map(|x| x.to_bits() as u32).collect(),
                _ => panic!("unexpected storage"),
            };
            (n, b)
        })
        .collect()
}

fn tiny(arch: Arch) -> ModelConfig {
    let mut c = ModelConfig::new(arch, 16, 24, 2, 4, 2, 40);
    c.head_dim = 6;
    c.eos_token_ids = vec![2, 5];
    c
}

#[test]
fn io_round_trip_is_bit_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let mut tied = tiny(Arch::Llama);
    tied.tie_word_embeddings = true;
    let cases = [
        ("qwen2_f32", tiny(Arch::Qwen2), DType::F32),
        ("llama_tied_bf16", tied.clone(), DType::BF16),
        (
            "llama_score_f32",
            tied.with_head(Head::SequenceClassification, 1),
            DType::F32,
        ),
        ("mistral_bf16", tiny(Arch::Mistral), DType::BF16),
    ];
    for (name, cfg, dtype) in cases {
        let dir = tmp.path().join(name);
        let p = Params::init(&cfg, 11, &Device::Cpu, dtype).unwrap();
        save_model(&dir, &cfg, &p).unwrap();
        let (cfg2, q) = load_model(&dir, &Device::Cpu, dtype).unwrap();
        assert_eq!(cfg2.head, cfg.head, "{name}");
        assert_eq!(cfg2.head_dim, 6, "{name}");
        assert_eq!(cfg2.eos_token_ids, vec![2, 5], "{name}");
        assert_eq!(
            bits(&p),
            bits(&q),
            "{name}: loaded tensors differ from saved ones"
        );
        // No temporary files left behind.
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["config.json", "model.safetensors"], "{name}");
        if let Ok(out) = std::env::var("REALIGN_IO_SAVE_DIR") {
            save_model(&Path::new(&out).join(name), &cfg, &p).unwrap();
        }
    }
}

/// Sum and sum of |x| of every tensor as transformers computed them.
fn expected_sums(dir: &Path) -> HashMap<String, (f64, f64, Vec<usize>)> {
    let text = std::fs::read_to_string(dir.join("expected_sums.json")).unwrap();
    let v: HashMap<String, (f64, f64, Vec<usize>)> = serde_json::from_str(&text).unwrap();
    v
}

fn check_against_sums(dir: &Path, p: &Params) {
    let want = expected_sums(dir);
    let have = p.tensors();
    assert_eq!(have.len(), want.len(), "{}", dir.display());
    for (name, t) in have {
        let (sum, abs, shape) = &want[&name];
        assert_eq!(t.shape(), shape.as_slice(), "{name}");
        let x = t.to_vec_f32().unwrap();
        let s: f64 = x.iter().map(|&v| v as f64).sum();
        let a: f64 = x.iter().map(|&v| v.abs() as f64).sum();
        assert!(
            (s - sum).abs() <= 1e-4 * (1.0 + abs),
            "{name}: sum {s} vs {sum}"
        );
        assert!(
            (a - abs).abs() <= 1e-4 * (1.0 + abs),
            "{name}: abs sum {a} vs {abs}"
        );
    }
}

#[test]
fn io_loads_checkpoints_saved_by_transformers() {
    let dir = fixture("llama_f32");
    let (cfg, p) = load_model(&dir, &Device::Cpu, DType::F32).unwrap();
    assert_eq!(
        (cfg.arch, cfg.head_dim, cfg.rope_theta),
        (Arch::Llama, 8, 500.0)
    );
    assert_eq!(cfg.eos_token_ids, vec![2, 3]);
    assert!(p.lm_head.is_some());
    check_against_sums(&dir, &p);

    let dir = fixture("qwen2_score_bf16");
    let (cfg, p) = load_model(&dir, &Device::Cpu, DType::BF16).unwrap();
    assert_eq!(
        (cfg.head, cfg.num_labels),
        (Head::SequenceClassification, 1)
    );
    assert!(p.layers[1].v_bias.is_some() && p.lm_head.is_none());
    assert_eq!(p.score.as_ref().unwrap().shape(), &[1, 16]);
    check_against_sums(&dir, &p);
    // bf16 on disk widened to f32 is exact, so the sums agree in both dtypes.
    let p32 = load_params(&dir, &cfg, &Device::Cpu, DType::F32).unwrap();
    check_against_sums(&dir, &p32);

    let dir = fixture("mistral_sharded");
    let (cfg, p) = load_model(&dir, &Device::Cpu, DType::F32).unwrap();
    assert_eq!((cfg.arch, cfg.sliding_window), (Arch::Mistral, Some(32)));
    check_against_sums(&dir, &p);
}

/// Copies a fixture folder so that a test can damage it.
fn copy_fixture(name: &str, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn load_err(dir: &Path) -> String {
    format!(
        "{:#}",
        load_model(dir, &Device::Cpu, DType::F32).unwrap_err()
    )
}

#[test]
fn io_bad_checkpoints_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();

    // The config says 3 layers but the weights have 2: layer 2 is missing.
    let dir = tmp.path().join("missing");
    copy_fixture("llama_f32", &dir);
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).unwrap();
    std::fs::write(
        &cfg_path,
        text.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3"),
    )
    .unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains("model.layers.2.") && e.contains("missing"),
        "{e}"
    );

    // One layer fewer in the config: layer 1's tensors are unexpected.
    std::fs::write(
        &cfg_path,
        text.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 1"),
    )
    .unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains("model.layers.1.") && e.contains("does not describe"),
        "{e}"
    );

    // A different width: shapes do not match.
    std::fs::write(
        &cfg_path,
        text.replace("\"intermediate_size\": 24", "\"intermediate_size\": 20"),
    )
    .unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains("mlp.") && e.contains("[24, 16]") && e.contains("[20, 16]"),
        "{e}"
    );

    // No weights at all.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::copy(&cfg_path, empty.join("config.json")).unwrap();
    let e = load_err(&empty);
    assert!(
        e.contains("neither model.safetensors nor model.safetensors.index.json"),
        "{e}"
    );

    // A truncated weights file.
    let trunc = tmp.path().join("trunc");
    copy_fixture("llama_f32", &trunc);
    let w = trunc.join("model.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(&trunc);
    assert!(e.contains("not a valid safetensors file"), "{e}");

    // A shard the index names is gone.
    let shards = tmp.path().join("shards");
    copy_fixture("mistral_sharded", &shards);
    std::fs::remove_file(shards.join("model-00002-of-00003.safetensors")).unwrap();
    let e = load_err(&shards);
    assert!(e.contains("model-00002-of-00003.safetensors"), "{e}");
}

#[test]
fn io_loads_f16_checkpoints() {
    use half::{bf16, f16};
    use safetensors::{tensor::TensorView, Dtype};
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny(Arch::Qwen2);
    let p = Params::init(&cfg, 5, &Device::Cpu, DType::F32).unwrap();
    // Write every tensor as f16 (what some HF checkpoints ship).
    let halves: Vec<(String, Vec<usize>, Vec<u8>)> = p
        .tensors()
        .into_iter()
        .map(|(n, t)| {
            let bytes = t
                .to_vec_f32()
                .unwrap()
                .iter()
                .flat_map(|&x| f16::from_f32(x).to_bits().to_le_bytes())
                .collect();
            (n, t.shape().to_vec(), bytes)
        })
        .collect();
    let views: Vec<(String, TensorView)> = halves
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F16, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &tmp.path().join("model.safetensors")).unwrap();
    cfg.save(&tmp.path().join("config.json")).unwrap();

    let (_, as_f32) = load_model(tmp.path(), &Device::Cpu, DType::F32).unwrap();
    let (_, as_bf16) = load_model(tmp.path(), &Device::Cpu, DType::BF16).unwrap();
    for (((name, orig), (_, a)), (_, b)) in p
        .tensors()
        .into_iter()
        .zip(as_f32.tensors())
        .zip(as_bf16.tensors())
    {
        let want: Vec<f32> = orig
            .to_vec_f32()
            .unwrap()
            .iter()
            .map(|&x| f16::from_f32(x).to_f32())
            .collect();
        // f16 -> f32 is exact; f16 -> bf16 rounds once.
        assert_eq!(a.to_vec_f32().unwrap(), want, "{name}");
        let want_bf16: Vec<f32> = want.iter().map(|&x| bf16::from_f32(x).to_f32()).collect();
        assert_eq!(b.to_vec_f32().unwrap(), want_bf16, "{name}");
    }
}
