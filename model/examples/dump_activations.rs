//! Writes every activation the forward keeps (per layer: x, xn, q, k, v, att, lse, x2, xn2, gate,
//! up; then the final norm's input and output, and the LM head's log-probs at temperature 1) for
//! a fixture batch, so that a precision question can be answered op by op offline: feed an op's
//! recorded input to a reference of that op (scripts/emulate_bf16_path.py's rounding) and compare
//! with its recorded output.
//!
//! Usage: dump_activations FIXTURE_DIR OUT.safetensors [--device cpu|cuda] [--dtype f32|bf16]
//! FIXTURE_DIR is one of model/tests/fixtures/hf/* (config.json, model.safetensors, batch.json).
//! Tensors are written as f32 (bf16 values widen exactly), named `layers.<l>.<what>`, `final_in`,
//! `hidden`, `logprobs`, `entropy`.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use kernels::{DType, Device, Tensor};
use model::io::load_model;
use model::llama::{forward, Batch, Keep, LmHead};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut pos = Vec::new();
    let (mut device, mut dtype) = ("cpu".to_string(), "f32".to_string());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--device" => device = it.next().context("--device needs a value")?.clone(),
            "--dtype" => dtype = it.next().context("--dtype needs a value")?.clone(),
            _ => pos.push(a.clone()),
        }
    }
    let [dir, out] = pos.as_slice() else {
        bail!("usage: dump_activations FIXTURE_DIR OUT.safetensors [--device cpu|cuda] [--dtype f32|bf16]");
    };
    let dir = PathBuf::from(dir);
    let device = Device::parse(&device).with_context(|| format!("--device {device}"))?;
    let dtype: DType = dtype.parse().with_context(|| format!("--dtype {dtype}"))?;
    let (cfg, params) = load_model(&dir, &device, dtype)?;
    let batch_json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("batch.json")).context("reading batch.json")?,
    )?;
    let seqs: Vec<Vec<u32>> =
        serde_json::from_value(batch_json["sequences"].clone()).context("batch.json: sequences")?;
    let batch = Batch::from_sequences(&seqs, &device)?;
    let acts = forward(&params, &cfg, &batch, Keep::ForBackward)?;
    let out_lm = LmHead::new(1.0).forward(&params, &acts.hidden, &batch.next_token_targets())?;

    let mut tensors: HashMap<String, (Vec<usize>, Vec<f32>)> = HashMap::new();
    let mut put = |name: String, t: &Tensor| -> Result<()> {
        tensors.insert(name, (t.shape().to_vec(), t.to_vec_f32()?));
        Ok(())
    };
    for (l, a) in acts.layers.iter().enumerate() {
        for (what, t) in [
            ("x", &a.x),
            ("xn", &a.xn),
            ("q", &a.q),
            ("k", &a.k),
            ("v", &a.v),
            ("att", &a.att),
            ("lse", &a.lse),
            ("x2", &a.x2),
            ("xn2", &a.xn2),
            ("gate", &a.gate),
            ("up", &a.up),
        ] {
            put(format!("layers.{l}.{what}"), t)?;
        }
    }
    put(
        "final_in".into(),
        acts.final_in.as_ref().context("no final_in")?,
    )?;
    put("hidden".into(), &acts.hidden)?;
    put("logprobs".into(), &out_lm.logprobs)?;
    put("entropy".into(), &out_lm.entropy)?;

    let bytes: HashMap<String, (Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(k, (shape, v))| (k, (shape, v.iter().flat_map(|x| x.to_le_bytes()).collect())))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(k, (shape, b))| {
            Ok((
                k.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)?,
            ))
        })
        .collect::<Result<_>>()?;
    safetensors::serialize_to_file(views, None, std::path::Path::new(out))
        .with_context(|| format!("writing {out}"))?;
    println!("{}: {} tensors -> {out}", dir.display(), bytes.len());
    Ok(())
}
