//! The decoder backward: from d(final hidden) [N,C] to the gradient of every decoder parameter,
//! layer by layer in reverse, with each op's explicit backward. The head backwards (LM, scalar)
//! produce d(final hidden) and their own weight gradients; see `lm_head.rs` and `score_head.rs`.
//!
//! Gradients are f32 and accumulated (+=) into a `Params`-shaped buffer
//! (`params.zeros_like(DType::F32)`), so micro-batches add up. The activations are consumed: each
//! layer's saved tensors are freed as soon as its backward is done.

use anyhow::{bail, Context, Result};
use kernels::ops::{
    add_inplace, attention_backward_rope, linear_backward, linear_backward_acc, rmsnorm_backward,
    rmsnorm_backward_acc, scatter_add_rows_host_ids, swiglu_backward,
};
use kernels::{DType, Tensor};

use super::activations::{Activations, LayerActs};
use super::batch::Batch;
use crate::config::ModelConfig;
use crate::params::{LayerParams, Params};

/// Accumulates into `grads` the gradients of all decoder parameters (embedding, layers, final
/// norm) given `d_hidden` [N,C] = dLoss/d(final hidden), in the activation dtype.
pub fn backward(
    params: &Params,
    cfg: &ModelConfig,
    batch: &Batch,
    acts: Activations,
    d_hidden: &Tensor,
    grads: &mut Params,
) -> Result<()> {
    check_grads(grads)?;
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
    add_inplace(&mut grads.final_norm, &dw)?;
    drop(final_in);

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
        )
        .with_context(|| format!("backward of layer {l}"))?;
    }

    // The embedding rows of the batch's tokens receive d(layer-0 input); repeated ids add up.
    // (Ids checked on the host: no device read-back before the launch.)
    scatter_add_rows_host_ids(&mut grads.embed, &batch.tokens, batch.host_tokens(), &dx)
        .context("embedding backward")?;
    Ok(())
}

/// Backward of one layer: d(layer output) in, d(layer input) out; weight gradients accumulate
/// into `g`.
fn layer_backward(
    d_out: Tensor,
    lp: &LayerParams,
    g: &mut LayerParams,
    s: LayerActs,
    cfg: &ModelConfig,
    batch: &Batch,
) -> Result<Tensor> {
    let n = batch.num_tokens();
    let (h, k, d) = (
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
    );
    let theta = cfg.rope_theta as f32;
    let scale = 1.0 / (d as f32).sqrt();

    // MLP block: x_out = x2 + down(silu(gate(xn2)) * up(xn2)).
    let d_act = linear_backward(&d_out, &s.act, &lp.down, &mut g.down, None)?; // [N,F]
    drop(s.act);
    let (d_gate, d_up) = swiglu_backward(&d_act, &s.gate, &s.up)?; // [N,F] each
    drop(d_act);
    let mut d_xn2 = linear_backward(&d_gate, &s.xn2, &lp.gate, &mut g.gate, None)?; // [N,C]
    linear_backward_acc(&d_up, &s.xn2, &lp.up, &mut g.up, None, &mut d_xn2)?; // d_xn2 +=
    drop((d_gate, d_up));
    // The residual passes d_out straight through to x2; the norm's dx is added onto it.
    let mut d_x2 = d_out;
    rmsnorm_backward_acc(
        &d_xn2,
        &s.x2,
        &lp.mlp_norm,
        &s.mlp_rstd,
        &mut d_x2,
        &mut g.mlp_norm,
    )?;
    drop(d_xn2);

    // Attention block: x2 = x + o(attention(rope(q(xn)), rope(k(xn)), v(xn))).
    let att = s.att.reshape(&[n, h * d])?; // [N,H,D] -> [N,H*D]
    let d_att = linear_backward(&d_x2, &att, &lp.o, &mut g.o, None)?; // [N,H*D]
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
    drop((d_att, att, s.q, s.k, s.v, s.lse));
    let dq = dq.reshape(&[n, h * d])?; // [N,H,D] -> [N,H*D]
    let dk = dk.reshape(&[n, k * d])?; // [N,K,D] -> [N,K*D]
    let dv = dv.reshape(&[n, k * d])?; // [N,K,D] -> [N,K*D]
    let mut d_xn = linear_backward(&dq, &s.xn, &lp.q, &mut g.q, g.q_bias.as_mut())?; // [N,C]
    linear_backward_acc(&dk, &s.xn, &lp.k, &mut g.k, g.k_bias.as_mut(), &mut d_xn)?; // d_xn +=
    linear_backward_acc(&dv, &s.xn, &lp.v, &mut g.v, g.v_bias.as_mut(), &mut d_xn)?; // d_xn +=
                                                                                     // d(layer input) = d_x2 (residual) + the attention norm's dx.
    let mut d_x = d_x2;
    rmsnorm_backward_acc(
        &d_xn,
        &s.x,
        &lp.attn_norm,
        &s.attn_rstd,
        &mut d_x,
        &mut g.attn_norm,
    )?;
    Ok(d_x)
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
