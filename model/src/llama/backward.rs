//! The decoder backward: from d(final hidden) [N,C] to the gradient of every decoder parameter,
//! layer by layer in reverse, with each op's explicit backward. The head backwards (LM, scalar)
//! produce d(final hidden) and their own weight gradients; see `lm_head.rs` and `score_head.rs`.
//!
//! Gradients are f32, in a `Params`-shaped buffer (`params.zeros_like(DType::F32)`). With
//! `GradStore::Add` they are accumulated (+=), so micro-batches add up; with
//! `GradStore::Overwrite` (the first micro-batch of a step) they are written over whatever the
//! buffer held, so a step needs no pass that zeroes 4 bytes per parameter first: the matrices'
//! GEMMs run with beta 0, the final norm's gradient is moved in, and the few small gradients that
//! kernels sum with atomics (norm weights, biases) are zeroed in one launch. The activations are
//! consumed: each layer's saved tensors are freed as soon as its backward is done.

use anyhow::{bail, Context, Result};
use kernels::ops::{
    add_inplace, attention_backward_rope, fill_many, linear_backward_input,
    linear_backward_input_acc, rmsnorm_backward, scatter_add_rows_host_ids, swiglu_backward,
    GradStore,
};
use kernels::{DType, Tensor};

use super::activations::{Activations, LayerActs};
use super::batch::Batch;
use super::grad_lane::{cuda_of, overlap_requested, GradLane, Overlap};
use super::qkv::qkv_backward;
use crate::config::ModelConfig;
use crate::params::{LayerParams, Params};

/// Stores into `grads` (added or written, as `store` says) the gradients of all decoder
/// parameters (embedding, layers, final norm) given `d_hidden` [N,C] = dLoss/d(final hidden), in
/// the activation dtype.
///
/// The embedding's gradient is the lookup's rows scattered onto the buffer, so `Overwrite` zeroes
/// it first, except when the embeddings are tied to the LM head (`params` has neither `lm_head`
/// nor `score`): then the head's backward, which runs first, wrote it (give it the same `store`)
/// and the rows are added onto that.
///
/// On a GPU with `REALIGN_TRAIN_OVERLAP` set, the layers' weight gradients are queued on a side
/// lane beside the input gradients (`grad_lane.rs`; the same bits with `1`).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    params: &Params,
    cfg: &ModelConfig,
    batch: &Batch,
    acts: Activations,
    d_hidden: &Tensor,
    grads: &mut Params,
    store: GradStore,
) -> Result<()> {
    backward_with_overlap(
        params,
        cfg,
        batch,
        acts,
        d_hidden,
        grads,
        store,
        overlap_requested(),
    )
}

/// [`backward`] with the weight gradients queued as `overlap` says (on the CPU always in place).
#[allow(clippy::too_many_arguments)]
pub fn backward_with_overlap(
    params: &Params,
    cfg: &ModelConfig,
    batch: &Batch,
    acts: Activations,
    d_hidden: &Tensor,
    grads: &mut Params,
    store: GradStore,
    overlap: Overlap,
) -> Result<()> {
    check_grads(grads)?;
    if store == GradStore::Overwrite {
        let embed_written_by_head = params.lm_head.is_none() && params.score.is_none();
        zero_atomic_grads(grads, !embed_written_by_head).context("zeroing the small gradients")?;
    }
    let Activations {
        hidden,
        layers,
        final_in,
        final_rstd,
    } = acts;
    drop(hidden);
    let final_in = final_in.context(
        "the activations were computed without saving for backward (use Keep::ForBackward)",
    )?;
    if layers.len() != params.layers.len() {
        bail!(
            "{} saved layers for a model of {} layers",
            layers.len(),
            params.layers.len()
        );
    }

    let (mut dx, dw) = rmsnorm_backward(d_hidden, &final_in, &params.final_norm, &final_rstd)
        .context("backward of the final norm")?;
    match store {
        GradStore::Add => add_inplace(&mut grads.final_norm, &dw)?,
        GradStore::Overwrite => grads.final_norm = dw, // [C] f32, the buffer's shape and dtype
    }
    drop(final_in);

    let device = params.embed.device().clone();
    let mut lane = GradLane::open(cuda_of(&device), overlap)?;
    let mut layers = layers;
    for l in (0..params.layers.len()).rev() {
        let saved = layers
            .pop()
            .expect("one saved entry per layer, checked above");
        dx = layer_backward(
            dx,
            &params.layers[l],
            &mut grads.layers[l],
            saved,
            cfg,
            batch,
            store,
            &mut lane,
        )
        .with_context(|| format!("backward of layer {l}"))?;
    }
    // Every weight gradient is queued: the device's stream waits for them.
    lane.finish()?;

    // The embedding rows of the batch's tokens receive d(layer-0 input); repeated ids add up.
    // (Ids checked on the host: no device read-back before the launch.)
    scatter_add_rows_host_ids(&mut grads.embed, &batch.tokens, batch.host_tokens(), &dx)
        .context("embedding backward")?;
    Ok(())
}

/// Backward of one layer: d(layer output) in, d(layer input) out; matrix gradients are stored
/// into `g` as `store` says (queued on `lane`), bias and norm gradients added.
#[allow(clippy::too_many_arguments)]
fn layer_backward(
    d_out: Tensor,
    lp: &LayerParams,
    g: &mut LayerParams,
    s: LayerActs,
    cfg: &ModelConfig,
    batch: &Batch,
    store: GradStore,
    lane: &mut GradLane,
) -> Result<Tensor> {
    let n = batch.num_tokens();
    let (h, k, d) = (
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
    );
    let theta = cfg.rope_theta as f32;
    let scale = 1.0 / (d as f32).sqrt();

    // Each weight gradient is queued as soon as its dy exists, before the input gradient that
    // follows it: on a lane it then waits for nothing else the device's stream does.
    // MLP block: x_out = x2 + down(silu(gate(xn2)) * up(xn2)).
    lane.weight_grad(&d_out, &s.act, &mut g.down, None, store)?;
    lane.keep(s.act);
    let d_act = linear_backward_input(&d_out, &lp.down)?; // [N,F]
    let (d_gate, d_up) = swiglu_backward(&d_act, &s.gate, &s.up)?; // [N,F] each
    drop((d_act, s.gate, s.up));
    lane.weight_grad(&d_gate, &s.xn2, &mut g.gate, None, store)?;
    lane.weight_grad(&d_up, &s.xn2, &mut g.up, None, store)?;
    let mut d_xn2 = linear_backward_input(&d_gate, &lp.gate)?; // [N,C]
    linear_backward_input_acc(&d_up, &lp.up, &mut d_xn2)?; // d_xn2 +=
    lane.keep(d_gate);
    lane.keep(d_up);
    lane.keep(s.xn2);
    // The residual passes d_out straight through to x2; the norm's dx is added onto it.
    let d_x2 = lane.add_norm_grad(
        d_out,
        &d_xn2,
        &s.x2,
        &lp.mlp_norm,
        &s.mlp_rstd,
        &mut g.mlp_norm,
    )?;
    drop(d_xn2);

    // Attention block: x2 = x + o(attention(rope(q(xn)), rope(k(xn)), v(xn))).
    let att = s.att.reshape(&[n, h * d])?; // [N,H,D] -> [N,H*D]
    lane.weight_grad(&d_x2, &att, &mut g.o, None, store)?;
    let d_att = linear_backward_input(&d_x2, &lp.o)?; // [N,H*D]
    let att = att.reshape(&[n, h, d])?; // [N,H*D] -> [N,H,D]
    let d_att = d_att.reshape(&[n, h, d])?; // [N,H*D] -> [N,H,D]

    // dq, dk come back already rotated by RoPE's −a (the gradients of the unrotated q, k): the
    // inverse rotation is fused into the attention backward's stores.
    let (dq, dk, dv) = attention_backward_rope(
        &d_att,
        &s.q,
        &s.k,
        &s.v,
        &att,
        &s.lse,
        &batch.cu_seqlens,
        scale,
        &batch.positions,
        theta,
    )?;
    drop((d_att, s.q, s.k, s.v, s.lse));
    lane.keep(att); // the o projection's weight gradient reads it
    let dq = dq.reshape(&[n, h * d])?; // [N,H,D] -> [N,H*D]
    let dk = dk.reshape(&[n, k * d])?; // [N,K,D] -> [N,K*D]
    let dv = dv.reshape(&[n, k * d])?; // [N,K,D] -> [N,K*D]
                                       // d(layer input) = d_x2 (residual) + the attention norm's dx.
    let d_xn = qkv_backward(dq, dk, dv, s.xn, lp, g, store, lane)?; // [N,C]
    let d_x = lane.add_norm_grad(
        d_x2,
        &d_xn,
        &s.x,
        &lp.attn_norm,
        &s.attn_rstd,
        &mut g.attn_norm,
    )?;
    lane.end_layer()?;
    Ok(d_x)
}

/// Zeroes, in one launch, the gradients that kernels add to with atomics (norm weights and
/// biases: they cannot be written over), and the embedding's when `embed` (the lookup scatters
/// rows onto it).
fn zero_atomic_grads(grads: &mut Params, embed: bool) -> Result<()> {
    let mut zero: Vec<&mut Tensor> = vec![];
    if embed {
        zero.push(&mut grads.embed);
    }
    for g in grads.layers.iter_mut() {
        zero.push(&mut g.attn_norm);
        zero.push(&mut g.mlp_norm);
        zero.extend(
            [&mut g.q_bias, &mut g.k_bias, &mut g.v_bias]
                .into_iter()
                .flatten(),
        );
    }
    Ok(fill_many(&mut zero, 0.0)?)
}

/// Gradient buffers must be f32 (master precision) whatever the activation dtype.
pub(crate) fn check_grads(grads: &Params) -> Result<()> {
    for (name, t) in grads.tensors() {
        if t.dtype() != DType::F32 {
            bail!(
                "gradient buffer {name} is {}, expected f32 (make it with params.zeros_like(DType::F32))",
                t.dtype()
            );
        }
    }
    Ok(())
}
