//! Throughput of one full training step (forward → LM head → SFT loss → backward → clip → AdamW
//! with f32 master weights), Qwen2.5-0.5B shapes, 8 × 1024 tokens by default.
//!
//!   cargo run --release -p learner --example train_step_bench -- --device cuda --dtype bf16
//!   cargo run --release -p learner --example train_step_bench -- --tiny      (CPU smoke run)
//!
//! `--actor` also times the PPO actor step (clipped surrogate on the device) on the same tokens.
//!
//! Prints tokens/s, MFU and the host's time to queue a step (nothing in a step waits for the
//! device until all of it is queued, so a queue time well under the step time means the GPU never
//! waits for the host after the first launches). `--phases` then times one more step phase by
//! phase (the device synchronised between phases, so the sum is a little above a free-running
//! step): zeroing the gradients (for reference only: a step skips it, its first micro-batch
//! writes them), decoder forward, LM head forward, LM head backward (then both again with the
//! logits recomputed instead of kept), decoder backward, AdamW (norm, clip, update).
//!
//! FLOPs per token follow the PaLM convention: 6·P (P = parameters touched per token: all
//! matrices, counting the LM head once even when tied, not the embedding lookup) + 6·L·H·D·T for
//! causal attention (forward 2·2·H·D·T/2 per token, backward twice that),
//! T = sequence length. Peak: 989 TFLOP/s (H200 dense bf16).

use std::time::Instant;

use anyhow::{bail, Context, Result};
use kernels::ops::GradStore;
use kernels::{DType, Device};
use learner::batch::Sequence;
use learner::objectives::LossAgg;
use learner::optim::{AdamW, AdamWConfig};
use learner::train::SftStep;
use model::{Arch, ModelConfig, Params};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

struct Args {
    device: String,
    dtype: DType,
    seqs: usize,
    seq_len: usize,
    steps: usize,
    warmup: usize,
    micro_batch_tokens: usize,
    tiny: bool,
    phases: bool,
    actor: bool,
}

fn parse() -> Result<Args> {
    let mut a = Args {
        device: "cpu".into(),
        dtype: DType::F32,
        seqs: 8,
        seq_len: 1024,
        steps: 5,
        warmup: 2,
        micro_batch_tokens: 8192,
        tiny: false,
        phases: false,
        actor: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut val = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--device" => a.device = val()?,
            "--dtype" => a.dtype = val()?.parse()?,
            "--seqs" => a.seqs = val()?.parse()?,
            "--seq-len" => a.seq_len = val()?.parse()?,
            "--steps" => a.steps = val()?.parse()?,
            "--warmup" => a.warmup = val()?.parse()?,
            "--micro-batch-tokens" => a.micro_batch_tokens = val()?.parse()?,
            "--tiny" => a.tiny = true,
            "--phases" => a.phases = true,
            "--actor" => a.actor = true,
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(a)
}

fn main() -> Result<()> {
    let a = parse()?;
    let device = match a.device.as_str() {
        "cpu" => Device::Cpu,
        "cuda" => Device::cuda(0)?,
        other => bail!("--device must be cpu or cuda, got {other}"),
    };
    let mut cfg = if a.tiny {
        ModelConfig::new(Arch::Qwen2, 64, 128, 2, 4, 2, 256)
    } else {
        // Qwen2.5-0.5B: C 896, F 4864, 24 layers, 14 query / 2 kv heads, D 64, V 151936, tied.
        ModelConfig::new(Arch::Qwen2, 896, 4864, 24, 14, 2, 151936)
    };
    cfg.tie_word_embeddings = true;
    let (seqs_n, seq_len) = if a.tiny { (4, 64) } else { (a.seqs, a.seq_len) };
    let mut params = Params::init(&cfg, 0, &device, a.dtype)?;
    let mut grads = params.zeros_like(DType::F32)?;
    let mut opt = AdamW::new(&params, AdamWConfig::default())?;
    let mut rng = StdRng::seed_from_u64(0);
    let seqs: Vec<Sequence> = (0..seqs_n)
        .map(|_| {
            let t = (0..seq_len)
                .map(|_| rng.random_range(0..cfg.vocab_size as u32))
                .collect();
            Sequence::new(t, 1)
        })
        .collect();
    let refs: Vec<&Sequence> = seqs.iter().collect();
    let step = SftStep {
        agg: LossAgg::TokenMean,
        micro_batch_tokens: a.micro_batch_tokens.max(seq_len),
    };
    let tokens = (seqs_n * seq_len) as f64;
    let mut times = vec![];
    let mut queue_times = vec![];
    for s in 0..a.warmup + a.steps {
        let t0 = Instant::now();
        // Host time to queue the whole step (nothing in it waits for the device), then the wait.
        let pending = step.queue_step(&mut params, &cfg, &mut grads, &mut opt, &refs, 1e-5)?;
        let tq = t0.elapsed().as_secs_f64();
        let m = step.finish_step(&mut params, &mut opt, pending)?;
        // The loss and grad norm were read on the host after the update was queued; read a
        // weight so the AdamW kernels of this step have finished too.
        params.final_norm.to_vec_f32()?;
        let dt = t0.elapsed().as_secs_f64();
        println!(
            "step {s}: {:.4} s (host queued it in {:.4} s), loss {:.4}, grad_norm {:.3}",
            dt,
            tq,
            m.get("sft/loss").unwrap_or(f64::NAN),
            m.get("sft/grad_norm").unwrap_or(f64::NAN)
        );
        if s >= a.warmup {
            times.push(dt);
            queue_times.push(tq);
        }
    }
    let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
    let mean_queue = queue_times.iter().sum::<f64>() / queue_times.len().max(1) as f64;
    let (c, f, v, l) = (
        cfg.hidden_size as f64,
        cfg.intermediate_size as f64,
        cfg.vocab_size as f64,
        cfg.num_hidden_layers as f64,
    );
    let (h, k, d) = (
        cfg.num_attention_heads as f64,
        cfg.num_key_value_heads as f64,
        cfg.head_dim as f64,
    );
    let per_layer = c * h * d * 2.0 + c * k * d * 2.0 + 3.0 * c * f; // q,o + k,v + gate,up,down
    let matmul_params = l * per_layer + v * c; // + LM head
    let flops_per_token = 6.0 * matmul_params + 6.0 * l * h * d * seq_len as f64;
    let tps = tokens / mean;
    // MFU in percent of a step that takes `secs`.
    let mfu_pct = |secs: f64| 100.0 * tokens / secs * flops_per_token / 989e12;
    println!(
        "{} × {} tokens, {:?} on {}: {:.4} s/step, {:.0} tokens/s, MFU {:.1}% (of 989 TFLOP/s); \
         weight gradients: {}",
        seqs_n,
        seq_len,
        a.dtype,
        a.device,
        mean,
        tps,
        mfu_pct(mean),
        model::llama::overlap_requested()
    );
    // The spread shows clock drift: on the H200 a sustained step runs into the 700 W power cap
    // and slows after the first few steps (docs/benchmarks.md, 2026-11-29 17:50).
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    if let (Some(&min), Some(&max)) = (sorted.first(), sorted.last()) {
        let median = sorted[sorted.len() / 2];
        println!(
            "step times: min {min:.4} s ({:.1}% MFU), median {median:.4} s ({:.1}%), max {max:.4} s \
             ({:.1}%)",
            mfu_pct(min),
            mfu_pct(median),
            mfu_pct(max)
        );
    }
    println!(
        "host queue time {:.4} s/step ({:.0}% of the step time; the rest the host waits)",
        mean_queue,
        100.0 * mean_queue / mean
    );
    if a.phases {
        phases(&device, &cfg, &mut params, &mut grads, &mut opt, &seqs)?;
    }
    if a.actor {
        let t = actor_steps(&a, &cfg, &mut params, &mut grads, &mut opt, &seqs)?;
        println!(
            "actor (PPO clipped surrogate, every token a response token): {:.4} s/step, {:.0} \
             tokens/s, MFU {:.1}%",
            t,
            tokens / t,
            mfu_pct(t)
        );
    }
    Ok(())
}

/// Mean time of `a.steps` PPO actor steps (after `a.warmup`) on the same tokens, all of them
/// response tokens: π_old = -ln V (about what random weights give), advantages ±1.
fn actor_steps(
    a: &Args,
    cfg: &ModelConfig,
    params: &mut Params,
    grads: &mut Params,
    opt: &mut AdamW,
    seqs: &[Sequence],
) -> Result<f64> {
    use learner::batch::Field;
    use learner::objectives::PolicyLossConfig;
    use learner::train::ActorStep;
    let mut rng = StdRng::seed_from_u64(1);
    let old = -(cfg.vocab_size as f32).ln();
    let seqs: Vec<Sequence> = seqs
        .iter()
        .map(|s| {
            let n = s.response_len();
            let adv = (0..n)
                .map(|_| if rng.random_bool(0.5) { 1.0 } else { -1.0 })
                .collect();
            s.clone()
                .with(Field::OldLogprob, vec![old; n])
                .with(Field::Advantages, adv)
        })
        .collect();
    let refs: Vec<&Sequence> = seqs.iter().collect();
    let step = ActorStep {
        loss: PolicyLossConfig::default(),
        head: model::llama::LmHead::new(1.0),
        micro_batch_tokens: a.micro_batch_tokens.max(seqs[0].tokens.len()),
    };
    let mut times = vec![];
    for s in 0..a.warmup + a.steps {
        let t0 = Instant::now();
        let pending = step.queue_step(params, cfg, grads, opt, &refs, 1e-5)?;
        let tq = t0.elapsed().as_secs_f64();
        let m = step.finish_step(params, opt, pending)?;
        params.final_norm.to_vec_f32()?;
        let dt = t0.elapsed().as_secs_f64();
        println!(
            "actor step {s}: {dt:.4} s (host queued it in {tq:.4} s), pg_loss {:.4}, clipfrac {:.3}",
            m.get("actor/pg_loss").unwrap_or(f64::NAN),
            m.get("actor/pg_clipfrac").unwrap_or(f64::NAN)
        );
        if s >= a.warmup {
            times.push(dt);
        }
    }
    Ok(times.iter().sum::<f64>() / times.len().max(1) as f64)
}

/// One SFT-like step (d logprob = -1/N at every position) by phases, milliseconds each.
fn phases(
    device: &Device,
    cfg: &ModelConfig,
    params: &mut Params,
    grads: &mut Params,
    opt: &mut AdamW,
    seqs: &[Sequence],
) -> Result<()> {
    use model::llama::{backward, forward, Batch, Keep, LmHead};
    let toks: Vec<Vec<u32>> = seqs.iter().map(|s| s.tokens.clone()).collect();
    let batch = Batch::from_sequences(&toks, device)?;
    let targets = batch.next_token_targets();
    let n = batch.num_tokens();
    let head = LmHead::new(1.0);
    let mut t = Instant::now();
    let mut lap = |name: &str| -> Result<()> {
        device.synchronize()?;
        println!(
            "phase {name:<16} {:>8.2} ms",
            t.elapsed().as_secs_f64() * 1e3
        );
        t = Instant::now();
        Ok(())
    };
    device.synchronize()?;
    lap("start")?;
    // What zeroing every gradient would cost; a step does not (its first micro-batch overwrites).
    learner::train::zero_grads(grads)?;
    lap("(zero_grads)")?;
    let acts = forward(params, cfg, &batch, Keep::ForBackward)?;
    lap("forward")?;
    let out = head.forward(params, &acts.hidden, &targets)?;
    lap("head_forward")?;
    let d_lp = kernels::Tensor::from_f32(vec![-1.0 / n as f32; n], &[n], device)?;
    let d_hidden = head.backward(
        params,
        &acts.hidden,
        &targets,
        &out,
        &d_lp,
        None,
        grads,
        GradStore::Overwrite,
    )?;
    lap("head_backward")?;
    // The LM head with its logits recomputed in the backward (row chunks of 256 Mi logits, none
    // kept), against the default above that keeps all N·V f32 logits from the forward.
    let head = LmHead {
        max_logits: 256 << 20,
        ..head
    };
    let out = head.forward(params, &acts.hidden, &targets)?;
    lap("head_fwd_recompute")?;
    head.backward(
        params,
        &acts.hidden,
        &targets,
        &out,
        &d_lp,
        None,
        grads,
        GradStore::Overwrite,
    )?;
    lap("head_bwd_recompute")?;
    backward(
        params,
        cfg,
        &batch,
        acts,
        &d_hidden,
        grads,
        GradStore::Overwrite,
    )?;
    lap("backward")?;
    let st = opt.step(params, grads, 1e-5)?;
    lap("adamw")?;
    println!("phases: grad_norm {:.3}", st.grad_norm);
    Ok(())
}
