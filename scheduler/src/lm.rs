//! Model function calls over packed sequences: per-token log-probs and entropies (policy,
//! reference), per-token values (critic, reward model), and one micro-batch of training for
//! either head. Every call works on whole sequences (prompt + response) in the next-token layout:
//! the entry at position t belongs to token t+1 (its log-prob, or the value of the state in which
//! it is chosen); the last position of each sequence has no next token.

use std::ops::Range;

use anyhow::{ensure, Context, Result};
use kernels::ops::fill_inplace;
use kernels::{DType, Device, Tensor};
use model::llama::{backward, forward, values, values_backward, Batch, Keep, LmHead};
use model::{ModelConfig, Params};

/// A model's config and weights.
pub struct Model {
    pub cfg: ModelConfig,
    pub params: Params,
}

impl Model {
    pub fn device(&self) -> Device {
        self.params.embed.device().clone()
    }

    /// A deep copy (reference model from the policy, reward model from the policy).
    pub fn duplicate(&self) -> Result<Model> {
        Ok(Model {
            cfg: self.cfg.clone(),
            params: self.params.map(|_, t| Ok(t.try_clone()?))?,
        })
    }

    /// Moves the weights to `device` (frozen models wait in host memory between their calls).
    pub fn move_to(&mut self, device: &Device) -> Result<()> {
        if !self.params.embed.device().same(device) {
            self.params = self.params.to_device(device)?;
        }
        Ok(())
    }

    /// Bytes of the weights.
    pub fn weight_bytes(&self) -> usize {
        self.params
            .tensors()
            .iter()
            .map(|(_, t)| t.size_in_bytes())
            .sum()
    }
}

/// Consecutive runs of sequences holding at most `max_tokens` tokens each (a longer sequence is a
/// micro-batch of its own): gradient accumulation splits a mini-batch this way.
pub fn micro_batches(lens: &[usize], max_tokens: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut tokens) = (0, 0);
    for (i, &l) in lens.iter().enumerate() {
        if i > start && tokens + l > max_tokens {
            out.push(start..i);
            start = i;
            tokens = 0;
        }
        tokens += l;
    }
    if start < lens.len() {
        out.push(start..lens.len());
    }
    out
}

/// Gradient buffers (f32, zeroed) shaped like `params`.
pub fn zero_grads(params: &Params) -> Result<Params> {
    params.zeros_like(DType::F32)
}

/// Sets every gradient to zero for the next optimiser step.
pub fn clear_grads(grads: &mut Params) -> Result<()> {
    for (_, t) in grads.tensors_mut() {
        fill_inplace(t, 0.0)?;
    }
    Ok(())
}

/// Log-probs of each next token and entropies at every position, packed `[N]` over `seqs`, under
/// softmax(logits / temperature); no backward state is kept.
pub fn logprobs(
    m: &Model,
    seqs: &[Vec<u32>],
    temperature: f32,
    max_tokens: usize,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let lens: Vec<usize> = seqs.iter().map(Vec::len).collect();
    let head = LmHead::new(temperature);
    let dev = m.device();
    let (mut lp, mut ent) = (Vec::new(), Vec::new());
    for r in micro_batches(&lens, max_tokens) {
        let batch = Batch::from_sequences(&seqs[r], &dev)?;
        let acts = forward(&m.params, &m.cfg, &batch, Keep::OutputOnly)?;
        let targets = batch.next_token_targets();
        let out = head.forward(&m.params, &acts.hidden, &targets)?;
        lp.extend(out.logprobs.to_vec_f32()?);
        ent.extend(out.entropy.to_vec_f32()?);
    }
    Ok((lp, ent))
}

/// The scalar head at every position, packed `[N]` over `seqs`.
pub fn token_values(m: &Model, seqs: &[Vec<u32>], max_tokens: usize) -> Result<Vec<f32>> {
    let lens: Vec<usize> = seqs.iter().map(Vec::len).collect();
    let dev = m.device();
    let mut out = Vec::new();
    for r in micro_batches(&lens, max_tokens) {
        let batch = Batch::from_sequences(&seqs[r], &dev)?;
        let acts = forward(&m.params, &m.cfg, &batch, Keep::OutputOnly)?;
        out.extend(values(&m.params, &acts.hidden)?.to_vec_f32()?);
    }
    Ok(out)
}

/// The reward model's score of each sequence: its value at the last token.
pub fn sequence_scores(m: &Model, seqs: &[Vec<u32>], max_tokens: usize) -> Result<Vec<f32>> {
    let v = token_values(m, seqs, max_tokens)?;
    let mut out = Vec::with_capacity(seqs.len());
    let mut off = 0;
    for s in seqs {
        off += s.len();
        out.push(v[off - 1]);
    }
    Ok(out)
}

/// The gradient of a loss with respect to the LM head's outputs of one micro-batch.
pub struct LmGrad {
    /// ∂loss/∂logprob, `[N]`.
    pub d_logprob: Vec<f32>,
    /// ∂loss/∂entropy, `[N]` (entropy bonus), if any.
    pub d_entropy: Option<Vec<f32>>,
}

/// Forward of one micro-batch with the LM head; `loss(logprob, entropy)` returns the loss
/// gradient, which is then pushed back through the model and accumulated into `grads`.
pub fn lm_train_micro(
    m: &Model,
    grads: &mut Params,
    seqs: &[Vec<u32>],
    temperature: f32,
    loss: impl FnOnce(&[f32], &[f32]) -> Result<LmGrad>,
) -> Result<()> {
    let dev = m.device();
    let head = LmHead::new(temperature);
    let batch = Batch::from_sequences(seqs, &dev)?;
    let n = batch.num_tokens();
    let acts = forward(&m.params, &m.cfg, &batch, Keep::ForBackward)?;
    let targets = batch.next_token_targets();
    let out = head.forward(&m.params, &acts.hidden, &targets)?;
    let lp = out.logprobs.to_vec_f32()?;
    let ent = out.entropy.to_vec_f32()?;
    let g = loss(&lp, &ent)?;
    ensure!(g.d_logprob.len() == n, "loss gradient has the wrong length");
    let d_lp = Tensor::from_f32(g.d_logprob, &[n], &dev)?;
    let d_ent = g
        .d_entropy
        .map(|d| Tensor::from_f32(d, &[n], &dev))
        .transpose()?;
    let d_hidden = head
        .backward(
            &m.params,
            &acts.hidden,
            &targets,
            &out,
            &d_lp,
            d_ent.as_ref(),
            grads,
        )
        .context("LM head backward")?;
    backward(&m.params, &m.cfg, &batch, acts, &d_hidden, grads).context("decoder backward")
}

/// Forward of one micro-batch with the scalar head; `loss(values)` returns ∂loss/∂value `[N]`,
/// pushed back through the model into `grads`.
pub fn value_train_micro(
    m: &Model,
    grads: &mut Params,
    seqs: &[Vec<u32>],
    loss: impl FnOnce(&[f32]) -> Result<Vec<f32>>,
) -> Result<()> {
    let dev = m.device();
    let batch = Batch::from_sequences(seqs, &dev)?;
    let n = batch.num_tokens();
    let acts = forward(&m.params, &m.cfg, &batch, Keep::ForBackward)?;
    let v = values(&m.params, &acts.hidden)?.to_vec_f32()?;
    let d_v = loss(&v)?;
    ensure!(d_v.len() == n, "value-loss gradient has the wrong length");
    let d_v = Tensor::from_f32(d_v, &[n], &dev)?;
    let d_hidden =
        values_backward(&m.params, &acts.hidden, &d_v, grads).context("score head backward")?;
    backward(&m.params, &m.cfg, &batch, acts, &d_hidden, grads).context("decoder backward")
}

#[cfg(test)]
mod tests {
    use super::*;

    use kernels::Device;
    use model::Arch;

    fn tiny() -> Model {
        let cfg = ModelConfig::new(Arch::Llama, 16, 32, 2, 2, 2, 11);
        let params = Params::init(&cfg, 3, &Device::Cpu, DType::F32).unwrap();
        Model { cfg, params }
    }

    /// One AdamW step on -Σ logp (masked) must raise exactly the masked log-probs it was asked
    /// to, and the packed layout must line up with `logprobs`.
    #[test]
    fn training_on_logprobs_raises_them() {
        let mut m = tiny();
        let seqs = vec![vec![1u32, 2, 3, 4], vec![5u32, 6, 7]];
        let lens: Vec<usize> = seqs.iter().map(Vec::len).collect();
        let (mask, _cu) = crate::packing::response_mask(&lens, &[2, 1]);
        let (before, _) = logprobs(&m, &seqs, 1.0, 1024).unwrap();
        let mut grads = zero_grads(&m.params).unwrap();
        lm_train_micro(&m, &mut grads, &seqs, 1.0, |lp, _| {
            for (a, b) in lp.iter().zip(&before) {
                assert!(
                    (a - b).abs() < 1e-5,
                    "training forward differs from inference"
                );
            }
            Ok(LmGrad {
                d_logprob: mask.iter().map(|&x| -x).collect(),
                d_entropy: None,
            })
        })
        .unwrap();
        let cfg = crate::config::OptimConfig {
            lr: 1e-2,
            ..Default::default()
        };
        let mut opt = crate::optim::AdamW::new(&cfg, &m.params, 1).unwrap();
        opt.step(&mut m.params, &mut grads).unwrap();
        let (after, _) = logprobs(&m, &seqs, 1.0, 1024).unwrap();
        let sum = |x: &[f32]| -> f32 { x.iter().zip(&mask).map(|(a, w)| a * w).sum() };
        assert!(
            sum(&after) > sum(&before) + 0.05,
            "{} -> {}",
            sum(&before),
            sum(&after)
        );
    }

    #[test]
    fn micro_batches_respect_the_token_budget() {
        assert_eq!(
            micro_batches(&[3, 3, 3, 9, 1], 6),
            vec![0..2, 2..3, 3..4, 4..5]
        );
        assert_eq!(micro_batches(&[], 6), Vec::<Range<usize>>::new());
    }
}
