//! The decoder's forward and backward against Hugging Face `transformers` on the committed fixtures
//! (scripts/make_model_fixtures.py: random-init Llama with GQA, Qwen2 with q/k/v bias and tied
//! embeddings, Mistral with one kv head, and a Llama sequence-classification model).
//!
//! One test body per fixture runs on every device of `kernels::testing::test_devices()`: CPU f32,
//! and on a GPU machine CUDA f32 (same tolerances) and CUDA bf16 (mean absolute log-prob error).
//! The fixtures' reference numbers are float64 math on the saved float32 weights.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kernels::ops::GradStore;
use kernels::testing::{max_abs_diff, rel_err, test_devices};
use kernels::{DType, Device, Tensor};
use model::llama::{
    backward, forward, last_token_scores, values, values_backward, Batch, Keep, LmHead,
};
use model::{ModelConfig, Params};
use serde::Deserialize;

/// f32 tolerances (issue 2): log-probs and entropies absolute, gradients relative per tensor.
const F32_ABS: f64 = 1e-4;
const F32_GRAD_REL: f64 = 1e-3;
/// bf16 at temperature 1: mean absolute log-prob (and entropy) error, issue 2's bar.
const BF16_MEAN_ABS: f64 = 2e-2;
/// bf16 at any temperature: our mean absolute error at most this multiple of transformers' own
/// bf16 forward's on the same fixture (both against the float64 reference).
///
/// Why a ratio and not a fixed bound: a bf16 forward's log-prob error scales with the logits'
/// size and with 1/T (at T = 0.7 transformers' own bf16 forward is at 1.8e-2 to 2.3e-2 on these
/// fixtures, above issue 2's 2e-2), so what a correct bf16 forward achieves is what transformers
/// achieves. Why 1.5: we round at other points than transformers (its eager attention, its
/// bf16 logits; our fused kernels, f32 logits), so on one 24-token batch the two errors are two
/// draws of the same size, not the same number: scripts/emulate_bf16_path.py --mma --trials 30
/// measures the expected errors of both over 30 random batches of this shape: ours (f32 logits)
/// / theirs = 0.92 to 1.0 on the three models' weights; on these fixtures' own batch the emulated
/// ratio is 0.92 to 1.23 (docs/model-forward.md).
/// A wrong formula or a lost rounding step shows up as several times transformers' error.
const BF16_VS_HF: f64 = 1.5;
/// bf16 gradients: loose bound that still catches a wrong formula (a missing term gives errors of
/// order 1).
const BF16_GRAD_REL: f64 = 1e-1;

#[derive(Deserialize)]
struct BatchJson {
    sequences: Vec<Vec<u32>>,
    loss_mask: Vec<Vec<u8>>,
    #[serde(default)]
    temperature: f32,
    #[serde(default)]
    pg_logprob_weights: Vec<f32>,
    #[serde(default)]
    pg_entropy_weights: Vec<f32>,
    #[serde(default)]
    value_weights: Vec<f32>,
}

struct Fixture {
    name: String,
    cfg: ModelConfig,
    weights: HashMap<String, (Vec<usize>, Vec<f32>)>,
    outputs: HashMap<String, (Vec<usize>, Vec<f32>)>,
    batch: BatchJson,
}

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(name)
}

/// All tensors of a float32 safetensors file as (shape, data).
fn read_f32_safetensors(path: &Path) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
            let data = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, (view.shape().to_vec(), data))
        })
        .collect()
}

fn load(name: &str) -> Fixture {
    let dir = fixture_dir(name);
    let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let batch: BatchJson =
        serde_json::from_str(&std::fs::read_to_string(dir.join("batch.json")).unwrap()).unwrap();
    Fixture {
        name: name.to_string(),
        cfg,
        weights: read_f32_safetensors(&dir.join("model.safetensors")),
        outputs: read_f32_safetensors(&dir.join("outputs.safetensors")),
        batch,
    }
}

impl Fixture {
    fn params(&self, device: &Device, dtype: DType) -> Params {
        Params::build(&self.cfg, |spec| {
            let (shape, data) = &self.weights[&spec.name];
            let t = Tensor::from_f32(data.clone(), shape, &Device::Cpu)?;
            let t = if dtype == DType::BF16 {
                kernels::ops::cast(&t, DType::BF16)?
            } else {
                t
            };
            Ok(t.to_device(device)?)
        })
        .unwrap()
    }

    fn out(&self, key: &str) -> &[f32] {
        &self
            .outputs
            .get(key)
            .unwrap_or_else(|| panic!("{}: no output {key}", self.name))
            .1
    }

    fn batch_on(&self, device: &Device) -> Batch {
        Batch::from_sequences(&self.batch.sequences, device).unwrap()
    }

    /// d(SFT loss)/d(logprob) per position: -mask / (number of masked positions).
    fn sft_dlogprob(&self) -> Vec<f32> {
        let mask: Vec<f32> = self
            .batch
            .loss_mask
            .iter()
            .flatten()
            .map(|&m| m as f32)
            .collect();
        let count: f32 = mask.iter().sum();
        mask.iter().map(|m| -m / count).collect()
    }
}

fn f32_tensor(data: Vec<f32>, device: &Device) -> Tensor {
    let n = data.len();
    Tensor::from_f32(data, &[n], device).unwrap()
}

fn dtypes(device: &Device) -> Vec<DType> {
    if device.is_cuda() {
        vec![DType::F32, DType::BF16]
    } else {
        vec![DType::F32]
    }
}

fn mean_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).abs())
        .sum::<f64>()
        / a.len() as f64
}

/// Checks log-probs / entropies against the reference: max abs error for f32; for bf16 the mean
/// abs error, at most [`BF16_VS_HF`] × transformers' own bf16 error (`hf_bf16`, the same
/// quantity from transformers' bf16 forward) and, when `abs_bar` is given, at most that.
/// bf16 misses are pushed onto `failures` (asserted by the caller once every figure is printed).
fn check_per_position(
    what: &str,
    got: &[f32],
    want: &[f32],
    dtype: DType,
    hf_bf16: &[f32],
    abs_bar: Option<f64>,
    failures: &mut Vec<String>,
) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if dtype == DType::F32 {
        let e = max_abs_diff(got, want);
        eprintln!("  {what}: max abs err {e:.2e}");
        assert!(e <= F32_ABS, "{what}: max abs error {e:.3e} > {F32_ABS:e}");
        return;
    }
    let e = mean_abs_diff(got, want);
    let hf = mean_abs_diff(hf_bf16, want);
    eprintln!(
        "  {what}: mean abs err {e:.2e} (transformers bf16 {hf:.2e}, ratio {:.2})",
        e / hf
    );
    if e > BF16_VS_HF * hf {
        failures.push(format!(
            "{what}: mean abs error {e:.3e} > {BF16_VS_HF} x transformers' own bf16 error {hf:.3e}"
        ));
    }
    if let Some(bar) = abs_bar.filter(|&bar| e > bar) {
        failures.push(format!("{what}: mean abs error {e:.3e} > {bar:e}"));
    }
}

/// Every gradient tensor (HF names) against the reference `prefix.<name>`, relative by norm.
fn check_grads(fx: &Fixture, grads: &Params, prefix: &str, dtype: DType) {
    let tol = if dtype == DType::F32 {
        F32_GRAD_REL
    } else {
        BF16_GRAD_REL
    };
    let mut worst = (0.0f64, String::new());
    let names = grads.names();
    let want_names: Vec<&String> = fx
        .outputs
        .keys()
        .filter(|k| k.starts_with(&format!("{prefix}.")))
        .collect();
    assert_eq!(names.len(), want_names.len(), "{prefix}: number of tensors");
    for (name, t) in grads.tensors() {
        let got = t.to_vec_f32().unwrap();
        let want = fx.out(&format!("{prefix}.{name}"));
        let e = rel_err(&got, want);
        assert!(
            e <= tol,
            "{}: {prefix} of {name}: rel err {e:.3e} > {tol:e}",
            fx.name
        );
        if e >= worst.0 {
            worst = (e, name);
        }
    }
    eprintln!("  {prefix}: worst rel err {:.2e} ({})", worst.0, worst.1);
}

/// What docs/model-forward.md says the forward keeps: per layer N·(4C + 3F + 2(H+K)·D) activation
/// elements plus N·(2 + H) f32 statistics, and the final norm's input, output and rstd.
fn expected_saved_bytes(cfg: &ModelConfig, batch: &Batch, dtype: DType) -> usize {
    let n = batch.num_tokens();
    let (c, f, h, k, d) = (
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
    );
    let act = dtype.size_in_bytes();
    let per_layer = n * (4 * c + 3 * f + 2 * (h + k) * d) * act + n * (2 + h) * 4;
    cfg.num_hidden_layers * per_layer + 2 * n * c * act + n * 4
}

/// Forward log-probs and entropies at temperature 1 and T, SFT loss, and its gradients.
fn check_causal_lm(name: &str) {
    let fx = load(name);
    for device in test_devices() {
        for dtype in dtypes(&device) {
            eprintln!("{name} on {device} {dtype}:");
            let mut failures = Vec::new();
            let params = fx.params(&device, dtype);
            let batch = fx.batch_on(&device);
            let targets = batch.next_token_targets();

            // Inference-only forward: same numbers, nothing kept.
            let acts = forward(&params, &fx.cfg, &batch, Keep::OutputOnly).unwrap();
            assert!(!acts.kept_for_backward());
            let t = fx.batch.temperature;
            let out_t = LmHead::new(t)
                .forward(&params, &acts.hidden, &targets)
                .unwrap();
            // At T != 1 the yardstick is transformers' own bf16 error (BF16_VS_HF).
            check_per_position(
                "logprobs at T",
                &out_t.logprobs.to_vec_f32().unwrap(),
                fx.out("logprobs_t"),
                dtype,
                fx.out("hf_bf16_logprobs_t"),
                None,
                &mut failures,
            );
            check_per_position(
                "entropy at T",
                &out_t.entropy.to_vec_f32().unwrap(),
                fx.out("entropy_t"),
                dtype,
                fx.out("hf_bf16_entropy_t"),
                None,
                &mut failures,
            );

            let acts = forward(&params, &fx.cfg, &batch, Keep::ForBackward).unwrap();
            assert_eq!(
                acts.saved_bytes(),
                expected_saved_bytes(&fx.cfg, &batch, dtype)
            );
            let head = LmHead::new(1.0);
            let out = head.forward(&params, &acts.hidden, &targets).unwrap();
            let lp = out.logprobs.to_vec_f32().unwrap();
            // Temperature 1: issue 2's bar (log-probs) as well.
            check_per_position(
                "logprobs",
                &lp,
                fx.out("logprobs"),
                dtype,
                fx.out("hf_bf16_logprobs"),
                Some(BF16_MEAN_ABS),
                &mut failures,
            );
            check_per_position(
                "entropy",
                &out.entropy.to_vec_f32().unwrap(),
                fx.out("entropy"),
                dtype,
                fx.out("hf_bf16_entropy"),
                Some(BF16_MEAN_ABS),
                &mut failures,
            );

            let dlp = fx.sft_dlogprob();
            let loss: f64 = lp.iter().zip(&dlp).map(|(&l, &d)| (l * d) as f64).sum();
            let want = fx.out("sft_loss")[0] as f64;
            eprintln!("  sft loss {loss:.6} (hf {want:.6})");
            let tol = if dtype == DType::F32 {
                F32_ABS
            } else {
                BF16_MEAN_ABS
            };
            if (loss - want).abs() > tol {
                failures.push(format!("sft loss {loss} vs {want}"));
            }

            let mut grads = params.zeros_like(DType::F32).unwrap();
            let d_lp = f32_tensor(dlp, &device);
            let d_hidden = head
                .backward(
                    &params,
                    &acts.hidden,
                    &targets,
                    &out,
                    &d_lp,
                    None,
                    &mut grads,
                    GradStore::Add,
                )
                .unwrap();
            backward(
                &params,
                &fx.cfg,
                &batch,
                acts,
                &d_hidden,
                &mut grads,
                GradStore::Add,
            )
            .unwrap();
            check_grads(&fx, &grads, "grad", dtype);
            assert!(
                failures.is_empty(),
                "{name} on {device} {dtype}: {failures:#?}"
            );
        }
    }
}

#[test]
fn llama_gqa_matches_transformers() {
    check_causal_lm("llama_gqa");
}

#[test]
fn qwen2_tied_with_bias_matches_transformers() {
    check_causal_lm("qwen2_tied");
}

#[test]
fn mistral_one_kv_head_matches_transformers() {
    check_causal_lm("mistral");
}

/// A policy-gradient-shaped loss: arbitrary d(logprob) and d(entropy) at temperature T, with the
/// LM head forced to work in chunks of a few rows (the path long batches take).
#[test]
fn qwen2_logprob_and_entropy_backward_at_temperature_in_chunks() {
    let fx = load("qwen2_tied");
    for device in test_devices() {
        for dtype in dtypes(&device) {
            eprintln!("qwen2_tied pg loss on {device} {dtype}:");
            let mut failures = Vec::new();
            let params = fx.params(&device, dtype);
            let batch = fx.batch_on(&device);
            let targets = batch.next_token_targets();
            let acts = forward(&params, &fx.cfg, &batch, Keep::ForBackward).unwrap();
            let mut head = LmHead::new(fx.batch.temperature);
            // 5 rows of V = 128 logits per chunk: 24 tokens take 5 chunks, the last one partial.
            head.max_logits = 5 * fx.cfg.vocab_size;
            let out = head.forward(&params, &acts.hidden, &targets).unwrap();
            let lp = out.logprobs.to_vec_f32().unwrap();
            let ent = out.entropy.to_vec_f32().unwrap();
            check_per_position(
                "chunked logprobs at T",
                &lp,
                fx.out("logprobs_t"),
                dtype,
                fx.out("hf_bf16_logprobs_t"),
                None,
                &mut failures,
            );
            check_per_position(
                "chunked entropy at T",
                &ent,
                fx.out("entropy_t"),
                dtype,
                fx.out("hf_bf16_entropy_t"),
                None,
                &mut failures,
            );
            let (a, b) = (&fx.batch.pg_logprob_weights, &fx.batch.pg_entropy_weights);
            let loss: f64 = (0..lp.len())
                .map(|i| (a[i] * lp[i] + b[i] * ent[i]) as f64)
                .sum();
            let want = fx.out("pg_loss")[0] as f64;
            eprintln!("  pg loss {loss:.6} (hf {want:.6})");
            let tol = if dtype == DType::F32 { 1e-3 } else { 0.5 };
            if (loss - want).abs() > tol {
                failures.push(format!("pg loss {loss} vs {want}"));
            }

            let mut grads = params.zeros_like(DType::F32).unwrap();
            let (d_lp, d_ent) = (
                f32_tensor(a.clone(), &device),
                f32_tensor(b.clone(), &device),
            );
            let d_hidden = head
                .backward(
                    &params,
                    &acts.hidden,
                    &targets,
                    &out,
                    &d_lp,
                    Some(&d_ent),
                    &mut grads,
                    GradStore::Add,
                )
                .unwrap();
            backward(
                &params,
                &fx.cfg,
                &batch,
                acts,
                &d_hidden,
                &mut grads,
                GradStore::Add,
            )
            .unwrap();
            check_grads(&fx, &grads, "pg_grad", dtype);
            assert!(
                failures.is_empty(),
                "qwen2_tied pg on {device} {dtype}: {failures:#?}"
            );
        }
    }
}

/// Two micro-batches (sequence 0, then sequences 1 and 2) accumulated into one buffer give the
/// full batch's gradient.
#[test]
fn micro_batches_accumulate_to_the_full_batch_gradient() {
    let fx = load("llama_gqa");
    let device = Device::Cpu;
    let params = fx.params(&device, DType::F32);
    let dlp_all = fx.sft_dlogprob();
    let mut grads = params.zeros_like(DType::F32).unwrap();
    let seqs = &fx.batch.sequences;
    let split = seqs[0].len();
    for (part, dlp) in [
        (&seqs[..1], &dlp_all[..split]),
        (&seqs[1..], &dlp_all[split..]),
    ] {
        let batch = Batch::from_sequences(part, &device).unwrap();
        let targets = batch.next_token_targets();
        let acts = forward(&params, &fx.cfg, &batch, Keep::ForBackward).unwrap();
        let head = LmHead::new(1.0);
        let out = head.forward(&params, &acts.hidden, &targets).unwrap();
        let d_lp = f32_tensor(dlp.to_vec(), &device);
        let d_hidden = head
            .backward(
                &params,
                &acts.hidden,
                &targets,
                &out,
                &d_lp,
                None,
                &mut grads,
                GradStore::Add,
            )
            .unwrap();
        backward(
            &params,
            &fx.cfg,
            &batch,
            acts,
            &d_hidden,
            &mut grads,
            GradStore::Add,
        )
        .unwrap();
    }
    check_grads(&fx, &grads, "grad", DType::F32);
}

/// The scalar head (LlamaForSequenceClassification): per-position values, HF's pooled score of
/// each sequence (its last token), and the gradients of sum_i w_i * value_i.
#[test]
fn llama_seqcls_scalar_head_matches_transformers() {
    let fx = load("llama_seqcls");
    for device in test_devices() {
        for dtype in dtypes(&device) {
            eprintln!("llama_seqcls on {device} {dtype}:");
            let params = fx.params(&device, dtype);
            let batch = fx.batch_on(&device);
            let acts = forward(&params, &fx.cfg, &batch, Keep::ForBackward).unwrap();
            let v = values(&params, &acts.hidden).unwrap();
            let got = v.to_vec_f32().unwrap();
            let scores = last_token_scores(&v, &batch).unwrap();
            let (tol_v, err_v, err_s) = if dtype == DType::F32 {
                (
                    F32_ABS,
                    max_abs_diff(&got, fx.out("value")),
                    max_abs_diff(&scores, fx.out("score_last")),
                )
            } else {
                (
                    5e-2,
                    mean_abs_diff(&got, fx.out("value")),
                    mean_abs_diff(&scores, fx.out("score_last")),
                )
            };
            eprintln!("  values err {err_v:.2e}, pooled scores err {err_s:.2e}");
            assert!(
                err_v <= tol_v && err_s <= tol_v,
                "values {err_v}, scores {err_s}"
            );

            let mut grads = params.zeros_like(DType::F32).unwrap();
            let w = f32_tensor(fx.batch.value_weights.clone(), &device);
            let d_hidden =
                values_backward(&params, &acts.hidden, &w, &mut grads, GradStore::Add).unwrap();
            backward(
                &params,
                &fx.cfg,
                &batch,
                acts,
                &d_hidden,
                &mut grads,
                GradStore::Add,
            )
            .unwrap();
            check_grads(&fx, &grads, "value_grad", dtype);
        }
    }
}

/// Misuse ends in errors, not panics.
#[test]
fn errors_instead_of_panics() {
    let fx = load("llama_gqa");
    let params = fx.params(&Device::Cpu, DType::F32);
    let batch = Batch::from_sequences(&[vec![1u32, 2, 200]], &Device::Cpu).unwrap();
    let e = forward(&params, &fx.cfg, &batch, Keep::OutputOnly)
        .err()
        .unwrap();
    assert!(format!("{e:#}").contains("token id 200"), "{e:#}");

    let batch = fx.batch_on(&Device::Cpu);
    let acts = forward(&params, &fx.cfg, &batch, Keep::OutputOnly).unwrap();
    let d = Tensor::zeros(acts.hidden.shape(), DType::F32, &Device::Cpu).unwrap();
    let mut grads = params.zeros_like(DType::F32).unwrap();
    let e = backward(
        &params,
        &fx.cfg,
        &batch,
        acts,
        &d,
        &mut grads,
        GradStore::Add,
    )
    .err()
    .unwrap();
    assert!(format!("{e:#}").contains("Keep::ForBackward"), "{e:#}");

    // A causal LM has no score head.
    let acts = forward(&params, &fx.cfg, &batch, Keep::OutputOnly).unwrap();
    assert!(values(&params, &acts.hidden).is_err());
}

/// The factorised LM head (R = onehot − p kept, row scalings around the GEMMs) against the
/// default one (logits kept) on the tied Qwen2 fixture at temperature T: the same log-probs and
/// the same gradients with d(logprob) only; with a d(entropy) as well it recomputes the logits
/// and still gives the default's gradients.
#[test]
fn qwen2_factorised_head_matches_default_head() {
    let fx = load("qwen2_tied");
    for device in test_devices() {
        for dtype in dtypes(&device) {
            let params = fx.params(&device, dtype);
            let batch = fx.batch_on(&device);
            let targets = batch.next_token_targets();
            let acts = forward(&params, &fx.cfg, &batch, Keep::ForBackward).unwrap();
            let d_lp = f32_tensor(fx.batch.pg_logprob_weights.clone(), &device);
            let d_ent = f32_tensor(fx.batch.pg_entropy_weights.clone(), &device);
            let run = |factorised: bool, d_ent: Option<&Tensor>| {
                let mut head = LmHead::new(fx.batch.temperature);
                head.factorised = factorised;
                let out = head.forward(&params, &acts.hidden, &targets).unwrap();
                if !factorised {
                    assert!(out.residual.is_none(), "R kept by the default head");
                } else if device.is_cpu() {
                    assert!(out.residual.is_some(), "the CPU keeps R");
                }
                let mut grads = params.zeros_like(DType::F32).unwrap();
                let dh = head
                    .backward(
                        &params,
                        &acts.hidden,
                        &targets,
                        &out,
                        &d_lp,
                        d_ent,
                        &mut grads,
                        GradStore::Add,
                    )
                    .unwrap();
                let lp = out.logprobs.to_vec_f32().unwrap();
                (
                    lp,
                    dh.to_vec_f32().unwrap(),
                    grads.embed.to_vec_f32().unwrap(),
                )
            };
            // f32: the same sums in another order; bf16: R and d(logits) are rounded at
            // different places (one rounding each).
            let tol = if dtype == DType::F32 { 1e-5 } else { 2e-2 };
            for d_ent in [None, Some(&d_ent)] {
                let want = run(false, d_ent);
                let got = run(true, d_ent);
                // The factorised forward takes the log-sum-exp in its own kernel (on the GPU a
                // cluster of blocks per row): equal on the CPU, within rounding on the GPU (the
                // H200 gave rel_err 5e-8, 1 ulp here and there, in f32).
                let e = rel_err(&got.0, &want.0);
                assert!(e <= 1e-6, "logprobs on {device} {dtype}: rel_err {e:.3e}");
                if device.is_cpu() {
                    assert_eq!(got.0, want.0, "logprobs on {device} {dtype}");
                }
                for (name, g, w) in [("d_hidden", &got.1, &want.1), ("d_embed", &got.2, &want.2)] {
                    let e = rel_err(g, w);
                    eprintln!(
                        "factorised {name} on {device} {dtype} entropy {}: rel_err {e:.3e}",
                        d_ent.is_some()
                    );
                    assert!(e <= tol, "factorised {name} on {device} {dtype}: {e:.3e}");
                }
            }
        }
    }
}
