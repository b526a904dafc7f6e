//! GGUF: the reader and dequantiser against llama.cpp's Python `gguf` package (fixtures from
//! scripts/make_gguf_fixture.py), malformed files written here byte by byte, and the import of a
//! tiny Llama that must give back the original HF tensors exactly.

use kernels::{DType, Device};
use model::chat_template::ChatMessage;
use model::gguf::{dequantize, import_gguf, GgmlType, GgufFile, MetaValue};
use model::io::load_model;
use model::tokenizer::Tokenizer;
use safetensors::SafeTensors;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/io")
        .join(name)
}

#[test]
fn gguf_reader_parses_metadata_of_every_type() {
    let g = GgufFile::open(&fixture("gguf/quant_types.gguf")).unwrap();
    assert_eq!(g.version, 3);
    let m = |k: &str| g.get(k).unwrap().clone();
    assert_eq!(m("t.u8"), MetaValue::U8(200));
    assert_eq!(m("t.i8"), MetaValue::I8(-5));
    assert_eq!(m("t.u16"), MetaValue::U16(60000));
    assert_eq!(m("t.i16"), MetaValue::I16(-300));
    assert_eq!(m("t.u32"), MetaValue::U32(4_000_000_000));
    assert_eq!(m("t.i32"), MetaValue::I32(-7));
    assert_eq!(m("t.f32"), MetaValue::F32(0.25));
    assert_eq!(m("t.bool"), MetaValue::Bool(true));
    assert_eq!(m("t.str"), MetaValue::String("héllo".into()));
    assert_eq!(m("t.u64"), MetaValue::U64(1 << 40));
    assert_eq!(m("t.i64"), MetaValue::I64(-(1 << 40)));
    assert_eq!(m("t.f64"), MetaValue::F64(-1.5));
    assert_eq!(g.get("t.arr_i32").unwrap().as_array().unwrap().len(), 3);
    assert_eq!(g.get_str_array("t.arr_str").unwrap(), vec!["a", "bc"]);
    let nested = g.get("t.arr_nested").unwrap().as_array().unwrap();
    assert_eq!(nested[0].as_array().unwrap().len(), 2);
    assert_eq!(nested[1].as_array().unwrap()[0].as_u64(), Some(3));
    let t = g.tensor("q4_k").unwrap();
    assert_eq!(
        (t.shape.clone(), t.ggml_type),
        (vec![3, 512], GgmlType::Q4K)
    );
}

#[test]
fn gguf_dequant_matches_the_gguf_package() {
    let g = GgufFile::open(&fixture("gguf/quant_types.gguf")).unwrap();
    let bytes = std::fs::read(fixture("gguf/quant_types_expected.safetensors")).unwrap();
    let expected = SafeTensors::deserialize(&bytes).unwrap();
    let names = [
        "f32", "f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q4_k", "q6_k",
    ];
    for name in names {
        let info = g.tensor(name).unwrap();
        let ours = g.dequantize(info).unwrap();
        let want: Vec<f32> = expected
            .tensor(name)
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(ours.len(), want.len(), "{name}");
        for (i, (a, b)) in ours.iter().zip(&want).enumerate() {
            // Same formula as ggml; only f32 rounding of the scale products may differ.
            assert!(
                (a - b).abs() <= 1e-6 * (1.0 + b.abs()),
                "{name}[{i}]: {a} vs {b}"
            );
        }
    }
}

#[test]
fn gguf_dequant_rejects_partial_blocks() {
    let e = dequantize(GgmlType::Q8_0, &[0u8; 35]).unwrap_err();
    assert!(format!("{e:#}").contains("Q8_0"), "{e:#}");
}

/// A minimal GGUF writer for malformed-file tests.
struct Writer(Vec<u8>);
impl Writer {
    fn new(version: u32, n_tensors: u64, n_kv: u64) -> Writer {
        let mut w = Writer(b"GGUF".to_vec());
        w.0.extend(version.to_le_bytes());
        w.0.extend(n_tensors.to_le_bytes());
        w.0.extend(n_kv.to_le_bytes());
        w
    }
    fn string(&mut self, s: &str) -> &mut Self {
        self.0.extend((s.len() as u64).to_le_bytes());
        self.0.extend(s.as_bytes());
        self
    }
    fn u32(&mut self, x: u32) -> &mut Self {
        self.0.extend(x.to_le_bytes());
        self
    }
    fn u64(&mut self, x: u64) -> &mut Self {
        self.0.extend(x.to_le_bytes());
        self
    }
}

fn parse_err(bytes: Vec<u8>) -> String {
    match GgufFile::from_bytes(bytes) {
        Ok(_) => panic!("malformed GGUF was accepted"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn gguf_reader_handles_alignment_and_rejects_malformed_files() {
    // One F32 tensor of shape [2, 3] (dims fastest-first: 3, 2) with 64-byte alignment.
    let mut w = Writer::new(3, 1, 1);
    w.string("general.alignment").u32(4).u32(64);
    w.string("x").u32(2).u64(3).u64(2).u32(0).u64(0);
    let mut bytes = w.0.clone();
    bytes.resize(bytes.len().next_multiple_of(64), 0);
    for v in [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0] {
        bytes.extend(v.to_le_bytes());
    }
    let g = GgufFile::from_bytes(bytes.clone()).unwrap();
    assert_eq!(g.alignment, 64);
    let t = g.tensor("x").unwrap();
    assert_eq!(t.shape, vec![2, 3]);
    assert_eq!(g.dequantize(t).unwrap(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);

    let e = parse_err(bytes[..bytes.len() - 4].to_vec());
    assert!(e.contains("runs past the end"), "{e}");
    let mut bad = bytes.clone();
    bad[0] = b'X';
    assert!(parse_err(bad).contains("magic"));
    assert!(parse_err(Writer::new(1, 0, 0).0).contains("version 1"));
    let mut w = Writer::new(3, 0, 1);
    w.string("k").u32(99);
    assert!(parse_err(w.0).contains("unknown metadata value type 99"));
    let mut w = Writer::new(3, 0, 1);
    w.string("k").u32(9).u32(4).u64(1 << 40);
    assert!(parse_err(w.0).contains("longer than the file"));
    let mut w = Writer::new(3, 1, 0);
    w.string("q").u32(1).u64(32).u32(20).u64(0);
    assert!(parse_err(w.0).contains("ggml type 20"));
    let mut w = Writer::new(3, 1, 0);
    w.string("q").u32(1).u64(33).u32(8).u64(0);
    assert!(parse_err(w.0).contains("not a multiple"));
}

#[test]
fn gguf_import_gives_back_the_hf_tensors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("tiny");
    let summary = import_gguf(&fixture("gguf/tiny_llama.gguf"), &out, DType::F32).unwrap();
    assert_eq!(summary.num_params, summary.config.num_params());
    let (cfg, ours) = load_model(&out, &Device::Cpu, DType::F32).unwrap();
    let (hf_cfg, hf) = load_model(&fixture("llama_f32"), &Device::Cpu, DType::F32).unwrap();
    assert_eq!(cfg.head_dim, hf_cfg.head_dim);
    assert_eq!(cfg.rope_theta, hf_cfg.rope_theta);
    assert_eq!(cfg.rms_norm_eps, hf_cfg.rms_norm_eps);
    assert_eq!(cfg.num_key_value_heads, hf_cfg.num_key_value_heads);
    assert!(!cfg.tie_word_embeddings);
    assert_eq!(cfg.eos_token_ids, vec![2]);
    for ((n, a), (m, b)) in ours.tensors().into_iter().zip(hf.tensors()) {
        assert_eq!(n, m);
        assert_eq!(
            a.to_vec_f32().unwrap(),
            b.to_vec_f32().unwrap(),
            "{n} differs from the HF original (q/k permutation?)"
        );
    }
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert!(out.join(f).exists(), "{f} not written");
    }

    // The rebuilt tokenizer splits digits one by one (smollm) even though "12" is a merge.
    let tok = Tokenizer::from_dir(&out).unwrap();
    let ids = tok.encode("hello world 12", true).unwrap();
    let pieces: Vec<String> = ids.iter().map(|&i| tok.id_to_token(i).unwrap()).collect();
    assert_eq!(pieces, ["hello", "Ġworld", "Ġ", "1", "2"]);
    assert_eq!(tok.decode(&ids, false).unwrap(), "hello world 12");
    let ids = tok.encode("<|im_start|>hello<|im_end|>", true).unwrap();
    assert_eq!((ids[0], *ids.last().unwrap()), (1, 2));
    assert_eq!(tok.decode(&ids, true).unwrap(), "hello");
    assert_eq!(
        (tok.bos_id, tok.pad_id, tok.eos_ids.clone()),
        (Some(1), Some(2), vec![2])
    );
    assert!(tok.is_eos(2) && !tok.is_eos(1));
    let chat = [ChatMessage::new("user", "hello")];
    let text = tok.apply_chat_template(&chat, true).unwrap();
    assert_eq!(
        text,
        "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(
        tok.encode_chat(&chat, true).unwrap(),
        tok.encode(&text, false).unwrap()
    );
    let e = tok.decode(&[64], false).unwrap_err();
    assert!(
        format!("{e:#}").contains("token id 64 is outside the vocabulary of 64"),
        "{e:#}"
    );
}
