//! The decoder forward: embedding, L × (RMSNorm → GQA attention with rotary → residual, RMSNorm →
//! SwiGLU MLP → residual), final RMSNorm. The heads (LM, scalar) live in their own files; the
//! q/k/v projections run as one product (`qkv.rs`).
//!
//! Every step is one coarse op from kernels/, in the dtype of the parameters (f32 on CPU; bf16 or
//! f32 on CUDA); norm statistics and attention log-sum-exps are f32.

use anyhow::{bail, Context, Result};
use kernels::ops::{
    add_rmsnorm, attention, gather_rows_host_ids, linear, rmsnorm, swiglu, Qkv, RopeTable,
};
use kernels::Tensor;

use super::activations::{Activations, LayerActs};
use super::batch::Batch;
use super::qkv::{qkv_forward, rope_table};
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

    // [N] ids -> [N,C]; the ids are checked against the table on the host (no device read-back).
    let mut x = gather_rows_host_ids(&params.embed, &batch.tokens, batch.host_tokens())
        .context("embedding lookup")?;
    // Each norm after the first is fused with the residual add before it (`add_rmsnorm`, the
    // op the rollout engine's decode layer uses too):
    // a layer hands the next one its input x and that input's normalised rows.
    let norm_after = |l: usize| {
        params
            .layers
            .get(l)
            .map_or(&params.final_norm, |lp| &lp.attn_norm)
    };
    let (mut xn, mut rstd) = rmsnorm(&x, norm_after(0), eps).context("first norm")?;
    let table = rope_table(&x, cfg, batch).context("the RoPE table")?;
    let mut layers = Vec::with_capacity(if keep == Keep::ForBackward {
        params.layers.len()
    } else {
        0
    });
    for (l, lp) in params.layers.iter().enumerate() {
        let out = layer_forward(
            x,
            xn,
            rstd,
            lp,
            norm_after(l + 1),
            cfg,
            batch,
            table.as_ref(),
        )
        .with_context(|| format!("forward of layer {l}"))?;
        if keep == Keep::ForBackward {
            layers.push(out.saved);
        }
        (x, xn, rstd) = (out.x, out.xn, out.rstd);
    }
    // x: the residual stream entering the final norm; xn, rstd: that norm's output.
    Ok(Activations {
        hidden: xn,
        layers,
        final_in: (keep == Keep::ForBackward).then_some(x),
        final_rstd: rstd,
    })
}

/// What a layer hands on: the next residual stream x, its normalised rows xn and 1/rms (by the
/// next layer's attention norm, or the final norm after the last layer), and its saved tensors.
struct LayerOut {
    x: Tensor,
    xn: Tensor,
    rstd: Tensor,
    saved: LayerActs,
}

/// One decoder layer. Takes the residual stream by value (it becomes `LayerActs::x`) with its
/// attention-normalised rows `xn` and their `attn_rstd`, and returns the next stream normalised
/// by `next_norm`.
#[allow(clippy::too_many_arguments)]
fn layer_forward(
    x: Tensor,
    xn: Tensor,
    attn_rstd: Tensor,
    lp: &LayerParams,
    next_norm: &Tensor,
    cfg: &ModelConfig,
    batch: &Batch,
    table: Option<&RopeTable>,
) -> Result<LayerOut> {
    let n = batch.num_tokens();
    let (h, d) = (cfg.num_attention_heads, cfg.head_dim);
    let eps = cfg.rms_norm_eps as f32;
    let scale = 1.0 / (d as f32).sqrt();

    // Attention block (xn = rmsnorm(x) by attn_norm, computed by the previous step).
    let Qkv { q, k: kk, v } = qkv_forward(&xn, lp, cfg, batch, table)?; // [N,H,D], [N,K,D] x2
    let (att, lse) = attention(&q, &kk, &v, &batch.cu_seqlens, scale)?; // [N,H,D], [N,H]
    let att = att.reshape(&[n, h * d])?; // [N,H,D] -> [N,H*D]
    let o = linear(&att, &lp.o, None)?; // [N,C], o_proj output
    let mid = add_rmsnorm(&x, &o, &lp.mlp_norm, eps)?; // x2 = x + o [N,C], its MLP norm [N,C], [N]
    drop(o);
    let (x2, xn2, mlp_rstd) = (mid.r, mid.out, mid.rstd);

    // MLP block.
    let gate = linear(&xn2, &lp.gate, None)?; // [N,F]
    let up = linear(&xn2, &lp.up, None)?; // [N,F]
    let act = swiglu(&gate, &up)?; // [N,F]
    let down = linear(&act, &lp.down, None)?; // [N,C], down_proj output
    let next = add_rmsnorm(&x2, &down, next_norm, eps)?; // x_out = x2 + down, its next norm
    drop(down);
    let (x_out, xn_next, rstd_next) = (next.r, next.out, next.rstd);

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
    Ok(LayerOut {
        x: x_out,
        xn: xn_next,
        rstd: rstd_next,
        saved,
    })
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
