//! The decoder forward: embedding, L × (RMSNorm → GQA attention with rotary → residual, RMSNorm →
//! SwiGLU MLP → residual), final RMSNorm. The heads (LM, scalar) live in their own files.
//!
//! Every step is one coarse op from kernels/, in the dtype of the parameters (f32 on CPU; bf16 or
//! f32 on CUDA); norm statistics and attention log-sum-exps are f32.

use anyhow::{bail, Context, Result};
use kernels::ops::{add_inplace, attention, gather_rows, linear, rmsnorm, rope, swiglu};
use kernels::Tensor;

use super::activations::{Activations, LayerActs};
use super::batch::Batch;
use crate::config::ModelConfig;
use crate::params::{LayerParams, Params};

/// What the forward keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// Everything the backward needs (training).
    ForBackward,
    /// Only the final hidden states; each layer's intermediates are freed as soon as the next
    /// layer has started (scoring, reference / critic inference).
    OutputOnly,
}

/// Runs the decoder over a packed batch and returns the final hidden states [N,C] and, with
/// [`Keep::ForBackward`], the saved activations.
pub fn forward(
    params: &Params,
    cfg: &ModelConfig,
    batch: &Batch,
    keep: Keep,
) -> Result<Activations> {
    check_inputs(params, cfg, batch)?;
    let eps = cfg.rms_norm_eps as f32;

    // [N] ids -> [N,C]
    let mut x = gather_rows(&params.embed, &batch.tokens).context("embedding lookup")?;
    let mut layers = Vec::with_capacity(if keep == Keep::ForBackward {
        params.layers.len()
    } else {
        0
    });
    for (l, lp) in params.layers.iter().enumerate() {
        let (x_out, saved) =
            layer_forward(x, lp, cfg, batch).with_context(|| format!("forward of layer {l}"))?;
        if keep == Keep::ForBackward {
            layers.push(saved);
        }
        x = x_out;
    }
    let (hidden, final_rstd) = rmsnorm(&x, &params.final_norm, eps).context("final norm")?;
    Ok(Activations {
        hidden,
        layers,
        final_in: (keep == Keep::ForBackward).then_some(x),
        final_rstd,
    })
}

/// One decoder layer. Takes the residual stream by value (it becomes `LayerActs::x`) and returns
/// the next one.
fn layer_forward(
    x: Tensor,
    lp: &LayerParams,
    cfg: &ModelConfig,
    batch: &Batch,
) -> Result<(Tensor, LayerActs)> {
    let n = batch.num_tokens();
    let (h, k, d) = (
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
    );
    let eps = cfg.rms_norm_eps as f32;
    let theta = cfg.rope_theta as f32;
    let scale = 1.0 / (d as f32).sqrt();

    // Attention block.
    let (xn, attn_rstd) = rmsnorm(&x, &lp.attn_norm, eps)?; // [N,C], [N]
    let q = linear(&xn, &lp.q, lp.q_bias.as_ref())?.reshape(&[n, h, d])?; // [N,H*D] -> [N,H,D]
    let kk = linear(&xn, &lp.k, lp.k_bias.as_ref())?.reshape(&[n, k, d])?; // [N,K*D] -> [N,K,D]
    let v = linear(&xn, &lp.v, lp.v_bias.as_ref())?.reshape(&[n, k, d])?; // [N,K*D] -> [N,K,D]
    let q = rope(&q, &batch.positions, theta)?;
    let kk = rope(&kk, &batch.positions, theta)?;
    let (att, lse) = attention(&q, &kk, &v, &batch.cu_seqlens, scale)?; // [N,H,D], [N,H]
    let att = att.reshape(&[n, h * d])?; // [N,H,D] -> [N,H*D]
    let mut x2 = linear(&att, &lp.o, None)?; // [N,C]
    add_inplace(&mut x2, &x)?;

    // MLP block.
    let (xn2, mlp_rstd) = rmsnorm(&x2, &lp.mlp_norm, eps)?; // [N,C], [N]
    let gate = linear(&xn2, &lp.gate, None)?; // [N,F]
    let up = linear(&xn2, &lp.up, None)?; // [N,F]
    let act = swiglu(&gate, &up)?; // [N,F]
    let mut x_out = linear(&act, &lp.down, None)?; // [N,C]
    add_inplace(&mut x_out, &x2)?;

    let att = att.reshape(&[n, h, d])?; // [N,H*D] -> [N,H,D], as the attention backward wants it
    let saved = LayerActs {
        x,
        attn_rstd,
        xn,
        q,
        k: kk,
        v,
        att,
        lse,
        x2,
        mlp_rstd,
        xn2,
        gate,
        up,
        act,
    };
    Ok((x_out, saved))
}

/// Checks what would otherwise fail deep inside an op with a less helpful message.
fn check_inputs(params: &Params, cfg: &ModelConfig, batch: &Batch) -> Result<()> {
    if params.layers.len() != cfg.num_hidden_layers {
        bail!(
            "the parameters have {} layers but the config says num_hidden_layers = {}",
            params.layers.len(),
            cfg.num_hidden_layers
        );
    }
    let device = params.embed.device();
    if !batch.tokens.device().same(device) {
        bail!(
            "the batch is on {} but the parameters are on {device}",
            batch.tokens.device()
        );
    }
    batch.check_vocab(cfg.vocab_size)?;
    for r in batch.seq_ranges() {
        cfg.check_seq_len(r.len())?;
    }
    Ok(())
}
