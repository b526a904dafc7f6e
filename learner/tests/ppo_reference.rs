//! A PPO actor step's and a critic step's gradients against a direct PyTorch implementation on the
//! same weights and batch (fixture: scripts/make_ppo_fixture.py, float64 reference on the saved
//! float32 weights). Every option of the policy loss is on and fires on some tokens: clip-higher,
//! dual clip, entropy bonus, k3 KL loss, TIS (one token capped), seq-mean-token-mean aggregation.

use std::path::{Path, PathBuf};

use kernels::{DType, Device};
use learner::batch::{Field, Sequence};
use learner::objectives::{KlEstimator, KlLoss, LossAgg, PolicyLossConfig, ValueLossConfig};
use learner::train::{ActorStep, CriticStep};
use model::io::load_model;
use model::llama::LmHead;
use serde_json::Value;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ppo")
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn sequences(batch: &Value) -> Vec<Sequence> {
    batch["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let tokens: Vec<u32> = s["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_u64().unwrap() as u32)
                .collect();
            Sequence::new(tokens, s["prompt_len"].as_u64().unwrap() as usize)
                .with(Field::OldLogprob, floats(&s["old_logprob"]))
                .with(Field::BehaviourLogprob, floats(&s["behaviour_logprob"]))
                .with(Field::RefLogprob, floats(&s["ref_logprob"]))
                .with(Field::Advantages, floats(&s["advantages"]))
                .with(Field::Values, floats(&s["old_values"]))
                .with(Field::Returns, floats(&s["returns"]))
        })
        .collect()
}

struct Reference {
    bytes: Vec<u8>,
}

impl Reference {
    fn load() -> Reference {
        Reference {
            bytes: std::fs::read(dir().join("outputs.safetensors")).unwrap(),
        }
    }
    fn get(&self, name: &str) -> Vec<f32> {
        let st = safetensors::SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st
            .tensor(name)
            .unwrap_or_else(|_| panic!("fixture lacks {name}"));
        t.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }
    fn scalar(&self, name: &str) -> f64 {
        self.get(name)[0] as f64
    }
}

/// max |a - b| / max |b| over a tensor: the error relative to the tensor's scale.
fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let scale = b
        .iter()
        .fold(0.0f64, |m, x| m.max(x.abs() as f64))
        .max(1e-12);
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs() as f64))
        / scale
}

#[test]
fn ppo_actor_gradients_match_pytorch() {
    let batch: Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("batch.json")).unwrap()).unwrap();
    let l = &batch["loss"];
    assert_eq!(l["kl_estimator"], "k3");
    assert_eq!(l["agg"], "seq-mean-token-mean");
    let (cfg, params) = load_model(&dir().join("actor"), &Device::Cpu, DType::F32).unwrap();
    let seqs = sequences(&batch);
    let refs: Vec<&Sequence> = seqs.iter().collect();
    let step = ActorStep {
        loss: PolicyLossConfig {
            clip_low: l["clip_low"].as_f64().unwrap(),
            clip_high: l["clip_high"].as_f64().unwrap(),
            dual_clip: l["dual_clip"].as_f64(),
            entropy_coef: l["entropy_coef"].as_f64().unwrap(),
            kl_loss: Some(KlLoss {
                coef: l["kl_coef"].as_f64().unwrap(),
                estimator: KlEstimator::K3,
            }),
            tis_cap: l["tis_cap"].as_f64(),
            agg: LossAgg::SeqMeanTokenMean,
        },
        head: LmHead::new(batch["temperature"].as_f64().unwrap() as f32),
        // Two micro-batches: accumulation is part of what is checked.
        micro_batch_tokens: 17,
    };
    let mut grads = params.zeros_like(DType::F32).unwrap();
    let m = step
        .accumulate(&params, &cfg, &mut grads, &refs, None)
        .unwrap();
    let r = Reference::load();
    let close = |name: &str, got: f64, want: f64, tol: f64| {
        assert!(
            (got - want).abs() <= tol * want.abs().max(1.0),
            "{name}: {got} vs PyTorch {want}"
        );
    };
    let loss = m.get("actor/pg_loss").unwrap()
        + m.get("actor/kl_loss").unwrap()
        + m.get("actor/entropy_loss").unwrap();
    close("actor loss", loss, r.scalar("actor_loss"), 1e-5);
    close(
        "pg_clipfrac",
        m.get("actor/pg_clipfrac").unwrap(),
        r.scalar("pg_clipfrac"),
        1e-6,
    );
    close(
        "ratio_mean",
        m.get("actor/ratio_mean").unwrap(),
        r.scalar("ratio_mean"),
        1e-5,
    );
    close(
        "ppo_kl",
        m.get("actor/ppo_kl").unwrap(),
        r.scalar("ppo_kl"),
        1e-5,
    );
    close(
        "entropy",
        m.get("actor/entropy").unwrap(),
        r.scalar("entropy"),
        1e-5,
    );
    eprintln!(
        "clipfrac {:?}, dual-clip fraction {:?}, TIS weight mean {:?}",
        m.get("actor/pg_clipfrac"),
        m.get("actor/pg_clipfrac_lower"),
        m.get("actor/tis_weight_mean")
    );
    close(
        "pg_clipfrac_lower",
        m.get("actor/pg_clipfrac_lower").unwrap(),
        r.scalar("pg_clipfrac_lower"),
        1e-6,
    );
    assert!(
        m.get("actor/pg_clipfrac_lower").unwrap() > 0.0,
        "the fixture must exercise the dual clip"
    );
    assert!(
        m.get("actor/pg_clipfrac").unwrap() > 0.0,
        "the fixture must exercise clipping"
    );
    let mut worst = (String::new(), 0.0);
    for (name, g) in grads.tensors() {
        let e = rel_err(
            &g.to_vec_f32().unwrap(),
            &r.get(&format!("actor_grad.{name}")),
        );
        if e > worst.1 {
            worst = (name.clone(), e);
        }
    }
    eprintln!(
        "actor: worst gradient error {:.2e} relative ({})",
        worst.1, worst.0
    );
    assert!(
        worst.1 < 3e-5,
        "gradient of {} differs from PyTorch by {:.2e} relative",
        worst.0,
        worst.1
    );
}

#[test]
fn critic_gradients_match_pytorch() {
    let batch: Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("batch.json")).unwrap()).unwrap();
    let (cfg, params) = load_model(&dir().join("critic"), &Device::Cpu, DType::F32).unwrap();
    let seqs = sequences(&batch);
    let refs: Vec<&Sequence> = seqs.iter().collect();
    let step = CriticStep {
        loss: ValueLossConfig {
            clip: batch["loss"]["vf_clip"].as_f64(),
            coef: 1.0,
            agg: LossAgg::TokenMean,
        },
        micro_batch_tokens: 17,
    };
    let mut grads = params.zeros_like(DType::F32).unwrap();
    let m = step
        .accumulate(&params, &cfg, &mut grads, &refs, None)
        .unwrap();
    let r = Reference::load();
    let (got, want) = (m.get("critic/vf_loss").unwrap(), r.scalar("critic_loss"));
    assert!(
        (got - want).abs() <= 1e-5 * want.abs().max(1.0),
        "vf_loss {got} vs {want}"
    );
    assert_eq!(
        m.get("critic/vf_clipfrac").unwrap() as f32,
        r.scalar("vf_clipfrac") as f32
    );
    let mut worst = (String::new(), 0.0);
    for (name, g) in grads.tensors() {
        let e = rel_err(
            &g.to_vec_f32().unwrap(),
            &r.get(&format!("critic_grad.{name}")),
        );
        if e > worst.1 {
            worst = (name.clone(), e);
        }
    }
    eprintln!(
        "critic: worst gradient error {:.2e} relative ({})",
        worst.1, worst.0
    );
    assert!(
        worst.1 < 3e-5,
        "gradient of {} differs from PyTorch by {:.2e} relative",
        worst.0,
        worst.1
    );
}
