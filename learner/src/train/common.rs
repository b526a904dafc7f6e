//! Pieces every training step shares: the model-side batch of a packed micro-batch, zeroing the
//! gradient buffers, host <-> device f32 vectors, and the optimiser step with its metrics.

use anyhow::{Context, Result};
use kernels::ops::{fill_many, GradStore};
use kernels::{Device, Tensor};
use model::llama::Batch;
use model::Params;

use crate::batch::{pack, split_by_token_budget, PackedBatch, Sequence};
use crate::metrics::Metrics;
use crate::objectives::Normaliser;
use crate::optim::{AdamW, PendingStep, StepStats};

/// Loss normaliser that counts only `seqs` (used when the caller gives no mini-batch-wide counts).
pub fn normaliser_of(seqs: &[&Sequence]) -> Result<Normaliser> {
    let p = pack(seqs)?;
    Normaliser::count(&p.loss_mask, &p.cu_seqlens)
}

/// The decoder's view of a packed micro-batch (tokens, offsets, positions on `device`).
pub fn model_batch(p: &PackedBatch, device: &Device) -> Result<Batch> {
    Batch::new(
        p.tokens.clone(),
        p.cu_seqlens_u32(),
        p.positions.clone(),
        device,
    )
}

/// Sets every gradient buffer to 0 before accumulating a mini-batch (one launch on the GPU).
pub fn zero_grads(grads: &mut Params) -> Result<()> {
    let (names, mut gs): (Vec<String>, Vec<&mut Tensor>) = grads.tensors_mut().into_iter().unzip();
    fill_many(&mut gs, 0.0).with_context(|| {
        format!(
            "zeroing the gradients of {} parameters ({}, ...)",
            names.len(),
            names.first().map_or("", |n| n.as_str())
        )
    })
}

/// The micro-batches of a mini-batch (indices into `lens`, under the token budget), each with how
/// its backward stores gradients: the first as `first`, the others add. A step passes
/// `GradStore::Overwrite` and so needs no zeroing pass; with no micro-batch at all nothing would
/// write the gradients, so they are zeroed here (when given).
pub(crate) fn micro_batches(
    lens: &[usize],
    budget: usize,
    first: GradStore,
    grads: Option<&mut Params>,
) -> Result<Vec<(GradStore, Vec<usize>)>> {
    let micros = split_by_token_budget(lens, budget)?;
    if let (true, GradStore::Overwrite, Some(g)) = (micros.is_empty(), first, grads) {
        zero_grads(g)?;
    }
    Ok(micros
        .into_iter()
        .enumerate()
        .map(|(k, m)| (if k == 0 { first } else { GradStore::Add }, m))
        .collect())
}

/// An `[N]` f32 tensor on `device` from host values.
pub fn upload(v: Vec<f32>, device: &Device) -> Result<Tensor> {
    let n = v.len();
    Ok(Tensor::from_f32(v, &[n], device)?)
}

/// Clips, steps AdamW, and records `{prefix}/grad_norm`, `{prefix}/lr` (and a skipped-step flag).
pub fn optimiser_step(
    prefix: &str,
    params: &mut Params,
    grads: &mut Params,
    opt: &mut AdamW,
    lr: f64,
    metrics: &mut Metrics,
) -> Result<()> {
    let s = opt.step(params, grads, lr)?;
    record_step(prefix, &s, metrics);
    Ok(())
}

/// Records what an optimiser step did: `{prefix}/grad_norm`, `{prefix}/lr` (and a skipped-step
/// flag).
pub fn record_step(prefix: &str, s: &StepStats, metrics: &mut Metrics) {
    metrics.set(&format!("{prefix}/grad_norm"), s.grad_norm);
    metrics.set(&format!("{prefix}/lr"), s.lr);
    if s.skipped {
        metrics.set(&format!("{prefix}/skipped_steps"), 1.0);
    }
}

/// A step queued without waiting for the device: what the mini-batch left there (`batch`, read
/// back for the metrics) and the optimiser's pending update.
pub(crate) struct QueuedUpdate<Q> {
    batch: Q,
    opt: PendingStep,
}

/// Queues the mini-batch's forward and backward (`queue`), then clip + AdamW: the whole step is
/// on the device's queue when this returns. The gradients are not zeroed first: `queue` must
/// write every one of them (its first micro-batch with `GradStore::Overwrite`, or zero them).
pub(crate) fn queue_update<Q>(
    params: &mut Params,
    grads: &mut Params,
    opt: &mut AdamW,
    lr: f64,
    queue: impl FnOnce(&Params, &mut Params) -> Result<Q>,
) -> Result<QueuedUpdate<Q>> {
    let batch = queue(params, grads)?;
    let opt = opt.queue_step(params, grads, lr)?;
    Ok(QueuedUpdate { batch, opt })
}

/// Completes a [`queue_update`]: the step's one wait for the device (the grad norm), then the
/// mini-batch's metrics (`metrics`) with `{prefix}/grad_norm`, `{prefix}/lr`.
pub(crate) fn finish_update<Q>(
    prefix: &str,
    params: &mut Params,
    opt: &mut AdamW,
    queued: QueuedUpdate<Q>,
    metrics: impl FnOnce(&Q) -> Result<Metrics>,
) -> Result<Metrics> {
    let s = opt.finish_step(params, queued.opt)?;
    let mut m = metrics(&queued.batch)?;
    record_step(prefix, &s, &mut m);
    Ok(m)
}
