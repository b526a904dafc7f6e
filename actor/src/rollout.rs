//! The rollout loop: schedule a step, run the model, sample, repeat until every sample finished.
//! The KV cache exists only inside [`run_rollout`]: it is allocated at the start and released
//! completely at the end (also on error), so training can use that memory.

use std::time::Instant;

use anyhow::Context;
use kernels::ops::sampling::MAX_BANNED;
use kernels::ops::{gather_rows, read_samples, sample_tokens, SampleSpec};
use kernels::Tensor;

use crate::block_manager::{BlockManager, SeqId};
use crate::profile::Stopwatch;
use crate::request::{Completion, HostTime, Request, RolloutStats};
use crate::sampling::{sample, sample_key};
use crate::scheduler::{Scheduler, SchedulerLimits};
use crate::step_model::{StepModel, Submitted};

/// Shape of the KV pool and of each step.
#[derive(Debug, Clone, Copy)]
pub struct RolloutConfig {
    pub block_size: usize,
    pub num_blocks: usize,
    pub max_batch_tokens: usize,
    pub max_running: usize,
    /// Let the n samples of a prompt share its KV blocks (one prefill). Off: each sample prefills
    /// its own copy (the reference the sharing is tested against).
    pub share_prefixes: bool,
    /// Overlap the host's work for step t+1 with the device's step t: step t+1 is scheduled and
    /// submitted before step t's tokens are read (they go from step t's output to step t+1's
    /// input on the device), stops are applied one step late and a finished sequence's extra
    /// token is discarded (docs/rollout.md, "Speed"). Off: each step's tokens are applied before
    /// the next step is scheduled. Both give the same completions.
    pub overlap: bool,
}

/// Generates every sample of every request. Completions come back ordered by request, then sample.
pub fn run_rollout(
    model: &mut dyn StepModel,
    requests: &[Request],
    cfg: &RolloutConfig,
) -> anyhow::Result<(Vec<Completion>, RolloutStats)> {
    validate(model, requests)?;
    anyhow::ensure!(
        cfg.num_blocks > 0,
        "the KV cache budget holds no block of {} tokens; raise the KV budget",
        cfg.block_size
    );
    model
        .alloc_cache(cfg.num_blocks, cfg.block_size)
        .with_context(|| {
            format!(
                "allocating the KV cache ({} blocks of {} tokens)",
                cfg.num_blocks, cfg.block_size
            )
        })?;
    let result = generate_all(model, requests, cfg);
    model.free_cache();
    result
}

fn validate(model: &dyn StepModel, requests: &[Request]) -> anyhow::Result<()> {
    let vocab = model.vocab_size();
    for (i, r) in requests.iter().enumerate() {
        r.sampling
            .validate()
            .with_context(|| format!("request {i} has bad sampling parameters"))?;
        anyhow::ensure!(r.n >= 1, "request {i} asks for n = 0 samples");
        anyhow::ensure!(!r.tokens.is_empty(), "request {i} has an empty prompt");
        anyhow::ensure!(
            r.tokens.len() < model.max_context(),
            "request {i}: prompt of {} tokens leaves no room in the model's context of {}",
            r.tokens.len(),
            model.max_context()
        );
        if let Some(&t) = r.tokens.iter().find(|&&t| t as usize >= vocab) {
            anyhow::bail!("request {i} has token id {t}, outside the vocabulary of {vocab}");
        }
    }
    Ok(())
}

fn generate_all(
    model: &mut dyn StepModel,
    requests: &[Request],
    cfg: &RolloutConfig,
) -> anyhow::Result<(Vec<Completion>, RolloutStats)> {
    let limits = SchedulerLimits {
        max_batch_tokens: cfg.max_batch_tokens,
        max_running: cfg.max_running,
        max_context: model.max_context(),
    };
    let mut sched = Scheduler::new(limits, BlockManager::new(cfg.num_blocks, cfg.block_size));
    for r in requests {
        let keys = (0..r.n).map(|i| sample_key(r.seed, i)).collect();
        sched.add_request(&r.tokens, r.sampling.clone(), keys, cfg.share_prefixes)?;
    }
    let vocab = model.vocab_size();
    let mut stats = RolloutStats {
        kv_blocks: cfg.num_blocks,
        block_size: cfg.block_size,
        kv_bytes_per_block: model.kv_bytes_per_block(cfg.block_size),
        ..Default::default()
    };
    // REALIGN_PROFILE=1: each phase ends with a device synchronise and is timed.
    let mut sw = Stopwatch::new();
    let phase = |sw: &mut Stopwatch, model: &dyn StepModel, name: &'static str| {
        if sw.on() {
            if let Err(e) = model.synchronize() {
                tracing::warn!("profile: synchronize failed: {e}");
            }
            sw.mark_host(name);
        }
    };
    // Clock reads only (no syncs): where the loop's wall time goes, graphs on or off.
    let loop_start = Instant::now();
    let mut ht = HostTime::default();
    // The decode step submitted last whose tokens the host has not applied yet (overlap only:
    // the serial loop applies each step at once).
    let mut in_flight: Option<InFlight> = None;
    while sched.has_work() || in_flight.is_some() {
        sw.reset();
        // Apply the in-flight step first when nothing else is left to run, or when this step
        // may preempt: a preempted sequence is recomputed from its tokens, so it needs them all.
        if in_flight.is_some() && (!sched.has_work() || sched.must_drain()) {
            let f = in_flight.take().expect("checked");
            apply(model, &mut sched, f, &mut stats, &mut ht)?;
            let t = Instant::now();
            sched.update_running(&[]);
            ht.bookkeeping_s += t.elapsed().as_secs_f64();
            stats.drains += 1;
            continue;
        }
        let t0 = Instant::now();
        let plan = sched.schedule();
        stats.preemptions += plan.preempted;
        ht.schedule_s += t0.elapsed().as_secs_f64();
        phase(&mut sw, model, "schedule");
        if plan.is_empty() {
            // Every running sequence awaits its last token, which is in flight.
            if let Some(f) = in_flight.take() {
                apply(model, &mut sched, f, &mut stats, &mut ht)?;
                sched.update_running(&[]);
                continue;
            }
            anyhow::ensure!(
                !sched.has_work() || !plan.finished.is_empty(),
                "internal error: the scheduler made no progress"
            );
            continue;
        }
        stats.steps += 1;
        let t_prefill = Instant::now();
        if !plan.copies.is_empty() {
            stats.block_copies += plan.copies.len();
            model.copy_blocks(&plan.copies)?;
            phase(&mut sw, model, "copy_blocks");
        }
        let mut prefilled: Vec<SeqId> = Vec::new();
        if !plan.prefill_groups.is_empty() {
            stats.prefill_tokens += plan.prefill.tokens.len();
            let logits = model
                .prefill_logits(&plan.prefill)
                .context("prefill step")?;
            phase(&mut sw, model, "prefill_forward");
            // Every sample of a group draws from its group's row.
            let outputs: Vec<(SeqId, u32)> = plan
                .prefill_groups
                .iter()
                .enumerate()
                .flat_map(|(row, group)| group.iter().map(move |&id| (id, row as u32)))
                .collect();
            let drawn = sample_outputs(&sched, &logits, &outputs, vocab)?;
            for (&(id, _), (token, logprob)) in outputs.iter().zip(drawn) {
                sched.append_token(id, token, logprob);
                prefilled.push(id);
            }
            phase(&mut sw, model, "prefill_sample");
        }
        ht.prefill_s += t_prefill.elapsed().as_secs_f64();
        let mut submitted = None;
        if !plan.decode_seqs.is_empty() {
            stats.decode_tokens += plan.decode_seqs.len();
            ht.decode_steps += 1;
            let t_decode = Instant::now();
            let outputs: Vec<(SeqId, u32)> = plan
                .decode_seqs
                .iter()
                .enumerate()
                .map(|(row, &id)| (id, row as u32))
                .collect();
            let step = match device_specs(&sched, &outputs) {
                // Every row samples on the device: one fused step (a CUDA graph on a GPU),
                // queued; its tokens are read after the next step is queued.
                Some(specs) => {
                    let prev = in_flight.as_ref().map(|f| &f.step);
                    let s = model
                        .decode_submit(&plan.decode, &specs, prev)
                        .context("decode step")?;
                    phase(&mut sw, model, "decode_step");
                    s
                }
                None => {
                    // Some row samples on the host, which needs the previous step's tokens now.
                    let prev = match in_flight.as_mut() {
                        Some(f) => Some(f.samples(model)?),
                        None => None,
                    };
                    let batch = plan.decode.resolved(prev)?;
                    let logits = model.decode_logits(&batch).context("decode step")?;
                    phase(&mut sw, model, "decode_forward");
                    let d = sample_outputs(&sched, &logits, &outputs, vocab)?;
                    phase(&mut sw, model, "decode_sample");
                    Submitted::Ready(d)
                }
            };
            sched.submitted(&plan.decode_seqs);
            ht.decode_s += t_decode.elapsed().as_secs_f64();
            submitted = Some(InFlight {
                seqs: plan.decode_seqs,
                step,
            });
        }
        // The previous step's tokens, read while the device runs the step just queued.
        if let Some(f) = in_flight.take() {
            apply(model, &mut sched, f, &mut stats, &mut ht)?;
        }
        in_flight = submitted;
        if !cfg.overlap {
            if let Some(f) = in_flight.take() {
                apply(model, &mut sched, f, &mut stats, &mut ht)?;
            }
        }
        phase(&mut sw, model, "append");
        let t_update = Instant::now();
        sched.update_running(&prefilled);
        ht.bookkeeping_s += t_update.elapsed().as_secs_f64();
        phase(&mut sw, model, "update");
    }
    ht.total_s = loop_start.elapsed().as_secs_f64();
    stats.host_time = ht;
    if sw.on() {
        for (name, secs) in model.profile() {
            sw.times.add(name, secs);
        }
        stats.profile = sw.times.phases.clone();
        tracing::info!("rollout profile: {}", sw.times.summary());
    }
    stats.graph_replays = model.graph_replays();
    tracing::debug!(
        steps = stats.steps,
        decode_steps = stats.host_time.decode_steps,
        graph_replays = stats.graph_replays,
        preemptions = stats.preemptions,
        seconds = stats.host_time.total_s,
        host_ms_per_decode_step = 1e3 * stats.host_time.host_per_decode_step_s(),
        "rollout done"
    );
    stats.peak_kv_blocks = sched.blocks.peak_used();
    stats.peak_kv_bytes = stats.peak_kv_blocks * stats.kv_bytes_per_block;
    let mut seqs: Vec<_> = sched.seqs.into_values().collect();
    seqs.sort_by_key(|s| (s.request, s.sample));
    let completions = seqs
        .into_iter()
        .map(|s| Completion {
            request: s.request,
            sample: s.sample,
            tokens: s.tokens[s.prompt_len..].to_vec(),
            logprobs: s.logprobs,
            finish_reason: s.finish.expect("every sequence finished"),
        })
        .collect();
    Ok((completions, stats))
}

/// A submitted decode step whose tokens the host has not applied yet.
struct InFlight {
    /// Row i's sequence.
    seqs: Vec<SeqId>,
    step: Submitted,
}

impl InFlight {
    /// The step's samples on the host, waiting for them if needed (they stay in the step).
    fn samples(&mut self, model: &mut dyn StepModel) -> anyhow::Result<&[(u32, f32)]> {
        if let Submitted::Queued { .. } = self.step {
            let step = std::mem::replace(&mut self.step, Submitted::Ready(Vec::new()));
            self.step = Submitted::Ready(model.decode_wait(step).context("decode step")?);
        }
        match &self.step {
            Submitted::Ready(v) => Ok(v),
            Submitted::Queued { .. } => unreachable!("waited for above"),
        }
    }
}

/// Appends the tokens of a decode step to their sequences (waiting for them first when they are
/// still on the device); a token of a sequence that finished meanwhile is discarded.
fn apply(
    model: &mut dyn StepModel,
    sched: &mut Scheduler,
    mut f: InFlight,
    stats: &mut RolloutStats,
    ht: &mut HostTime,
) -> anyhow::Result<()> {
    let t_wait = Instant::now();
    f.samples(model)?;
    ht.decode_s += t_wait.elapsed().as_secs_f64();
    let dt = model.take_decode_times();
    ht.decode_wait_s += dt.wait_s;
    ht.decode_pack_s += dt.pack_s;
    ht.decode_launch_s += dt.launch_s;
    let t_append = Instant::now();
    let Submitted::Ready(drawn) = f.step else {
        unreachable!("samples() leaves the step ready")
    };
    anyhow::ensure!(
        drawn.len() == f.seqs.len(),
        "internal error: a decode step returned {} samples for {} rows",
        drawn.len(),
        f.seqs.len()
    );
    for (&id, (token, logprob)) in f.seqs.iter().zip(drawn) {
        if !sched.receive(id, token, logprob) {
            stats.discarded_tokens += 1;
        }
    }
    ht.bookkeeping_s += t_append.elapsed().as_secs_f64();
    Ok(())
}

/// The device sampling specs of `outputs`, or None when some row needs the host (more banned ids
/// than the device op takes).
fn device_specs(sched: &Scheduler, outputs: &[(SeqId, u32)]) -> Option<Vec<SampleSpec>> {
    outputs
        .iter()
        .map(|&(id, row)| {
            let (params, banned, draw) = sched.next_draw(id);
            (banned.len() <= MAX_BANNED).then(|| params.spec(row, draw, banned))
        })
        .collect()
}

/// Draws the next token of each (sequence, logits row) output from `logits` [R, V]. Rows are
/// sampled where the logits live (`kernels::ops::sample_tokens`: only tokens and log-probs come
/// back); a row with more banned ids than the op takes is copied to the host, only that row, and
/// sampled there by the op's CPU reference. Returns (token, log-prob) per output.
fn sample_outputs(
    sched: &Scheduler,
    logits: &Tensor,
    outputs: &[(SeqId, u32)],
    vocab: usize,
) -> anyhow::Result<Vec<(u32, f32)>> {
    anyhow::ensure!(
        logits.rank() == 2 && logits.shape()[1] == vocab,
        "internal error: logits of shape {:?}, expected [rows, {vocab}]",
        logits.shape()
    );
    let mut out = vec![(0u32, 0.0f32); outputs.len()];
    let mut specs = Vec::new();
    let mut on_device = Vec::new();
    let mut on_host = Vec::new();
    for (k, &(id, row)) in outputs.iter().enumerate() {
        let (params, banned, draw) = sched.next_draw(id);
        if banned.len() > MAX_BANNED {
            on_host.push(k);
        } else {
            specs.push(params.spec(row, draw, banned));
            on_device.push(k);
        }
    }
    if !specs.is_empty() {
        let spec = SampleSpec::pack(&specs, logits.device())?;
        let drawn = read_samples(&sample_tokens(logits, &spec).context("sampling")?)?;
        for (&k, d) in on_device.iter().zip(drawn) {
            out[k] = d;
        }
    }
    if !on_host.is_empty() {
        // The distinct rows the host needs, copied in one go: [n, V].
        let mut rows: Vec<u32> = on_host.iter().map(|&k| outputs[k].1).collect();
        rows.sort_unstable();
        rows.dedup();
        let idx = Tensor::from_u32(rows.clone(), &[rows.len()], logits.device())?;
        let host = gather_rows(logits, &idx)?.to_vec_f32()?;
        for &k in &on_host {
            let (id, row) = outputs[k];
            let r = rows.binary_search(&row).expect("row was collected");
            let (params, banned, draw) = sched.next_draw(id);
            let s = sample(&host[r * vocab..(r + 1) * vocab], params, banned, draw);
            out[k] = (s.token, s.logprob);
        }
    }
    Ok(out)
}
