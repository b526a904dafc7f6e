//! The q, k, v projections of a layer as one product over their concatenated weights
//! [(H+2K)·D, C], forward and backward.
//!
//! At Qwen2.5-0.5B shapes the k and v projections are [N, C] · [128, C]ᵀ: too narrow to fill the
//! GPU, so three products cost well over the FLOPs of one (measured on an H100 at 8k tokens: k, v
//! took ~78 µs a layer over forward, dx and dW, for 11 GFLOP). One product per direction instead:
//! - forward: acc = xn · [Wq; Wk; Wv]ᵀ in f32, then `qkv_rope` adds the bias, rounds, rotates q
//!   and k and splits the heads, one launch (the decode step's epilogue, without its cache);
//! - backward: d_qkv = [dq | dk | dv] (one strided copy per part), then d_xn = d_qkv · W and
//!   dW = d_qkv ᵀ · xn as one GEMM each; dW and db go back to the parts' buffers (`split_store`).
//!
//! The weights are concatenated per call (2 MB a layer at Qwen2.5-0.5B, one copy per part), so
//! the parameters keep their HF layout and the optimiser sees the same tensors as before.
//!
//! On the CPU, the f32 reference, the three projections stay separate products (`linear` with its
//! bias, `rope`; in the backward three GEMMs adding into one dx): the fusion is for the GPU, and
//! the device tests compare the GPU layer against that plain composition.
//!
//! Opt-in for now: `REALIGN_QKV=fused`. The fused path passes its CPU tests and the ops' tests,
//! but no GPU was to be had in the session that wrote it (2026-12-06), so it has not run on one;
//! until it has (tests and `train_step_bench` with and without it, same call), the GPU runs the
//! separate products as before (q/k: f32 GEMM output + `rope_bias`; v: + `bias_cast`).

use anyhow::{Context, Result};
use kernels::ops::linear::linear_out;
use kernels::ops::rope::rope_bias;
use kernels::ops::{
    bias_cast, concat_cols, concat_rows, linear, linear_backward, linear_backward_input,
    linear_backward_input_acc, qkv_rope, rope, split_store, GradStore, Qkv, RopeTable,
};
use kernels::{DType, Tensor};

use super::batch::Batch;
use super::grad_lane::GradLane;
use crate::config::ModelConfig;
use crate::params::LayerParams;

/// Whether q/k/v run as one product for activations like `x`: on a GPU with
/// `REALIGN_QKV=fused` (read once).
fn fused(x: &Tensor) -> bool {
    static FUSED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let on = *FUSED.get_or_init(|| std::env::var("REALIGN_QKV").is_ok_and(|v| v == "fused"));
    !x.device().is_cpu() && on
}

/// [Wq; Wk; Wv] [(H+2K)·D, C] and, when the layer has any bias, [bq; bk; bv] (zeros for a
/// missing one).
pub(crate) fn qkv_weights(lp: &LayerParams) -> Result<(Tensor, Option<Tensor>)> {
    let w = concat_rows(&[&lp.q, &lp.k, &lp.v])?; // [(H+2K)·D, C]
    let biases = [
        (&lp.q_bias, &lp.q),
        (&lp.k_bias, &lp.k),
        (&lp.v_bias, &lp.v),
    ];
    if biases.iter().all(|(b, _)| b.is_none()) {
        return Ok((w, None));
    }
    let zeros: Vec<Option<Tensor>> = biases
        .iter()
        .map(|(b, w)| match b {
            Some(_) => Ok(None),
            None => Tensor::zeros(&[w.shape()[0]], w.dtype(), w.device()).map(Some),
        })
        .collect::<kernels::Result<_>>()?;
    let parts: Vec<&Tensor> = biases
        .iter()
        .zip(&zeros)
        .map(|((b, _), z)| b.as_ref().or(z.as_ref()).expect("a bias or its zeros"))
        .collect();
    Ok((w, Some(concat_rows(&parts)?))) // [(H+2K)·D]
}

/// For the fused path: a table of the RoPE angles for the batch's positions (one row per position
/// up to the longest sequence; others are computed by the op), built once per forward and shared
/// by the layers. None when the layers of activations like `x` run unfused.
pub(crate) fn rope_table(
    x: &Tensor,
    cfg: &ModelConfig,
    batch: &Batch,
) -> Result<Option<RopeTable>> {
    if !fused(x) {
        return Ok(None);
    }
    let longest = batch.seq_ranges().map(|r| r.len()).max().unwrap_or(1);
    Ok(Some(RopeTable::new(
        longest.max(1),
        cfg.head_dim,
        cfg.rope_theta as f32,
        batch.positions.device(),
    )?))
}

/// q [N,H,D] and k [N,K,D] with RoPE applied, and v [N,K,D], in xn's dtype.
pub(crate) fn qkv_forward(
    xn: &Tensor,
    lp: &LayerParams,
    cfg: &ModelConfig,
    batch: &Batch,
    table: Option<&RopeTable>,
) -> Result<Qkv> {
    if !fused(xn) {
        return unfused_forward(xn, lp, cfg, batch);
    }
    let (w, b) = qkv_weights(lp).context("concatenating the q/k/v weights")?;
    let acc = linear_out(xn, &w, None, DType::F32)?; // [N,(H+2K)·D] f32, unrounded
    Ok(qkv_rope(
        &acc,
        b.as_ref(),
        &batch.positions,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        xn.dtype(),
        cfg.rope_theta as f32,
        table,
    )?)
}

/// Backward of [`qkv_forward`] after RoPE's: given dq [N,H·D], dk [N,K·D], dv [N,K·D] (the
/// gradients of the projections' outputs before RoPE), returns d(xn) [N,C] and stores the weight
/// gradients into `g` as `store` says (bias gradients are added). The three products' weight
/// gradients go to `lane` (the fused product's run in place); the inputs are consumed.
#[allow(clippy::too_many_arguments)]
pub(crate) fn qkv_backward(
    dq: Tensor,
    dk: Tensor,
    dv: Tensor,
    xn: Tensor,
    lp: &LayerParams,
    g: &mut LayerParams,
    store: GradStore,
    lane: &mut GradLane,
) -> Result<Tensor> {
    if !fused(&xn) {
        return unfused_backward(dq, dk, dv, xn, lp, g, store, lane);
    }
    let (dq, dk, dv, xn) = (&dq, &dk, &dv, &xn);
    let d_qkv = concat_cols(&[dq, dk, dv])?; // [N,(H+2K)·D]
    let (w, b) = qkv_weights(lp).context("concatenating the q/k/v weights")?;
    let dev = xn.device();
    // db is summed with atomics, so it starts at zero; the fused dW is written whole by the GEMM
    // (beta 0) and is zeroed only because `Tensor` has no uninitialised constructor.
    let mut dw = Tensor::zeros(w.shape(), DType::F32, dev)?; // [(H+2K)·D, C]
    let mut db = match &b {
        Some(b) => Some(Tensor::zeros(b.shape(), DType::F32, dev)?),
        None => None,
    };
    let d_xn = linear_backward(&d_qkv, xn, &w, &mut dw, db.as_mut(), GradStore::Overwrite)?;
    split_store(&dw, &mut [&mut g.q, &mut g.k, &mut g.v], store)?;
    if let Some(db) = db {
        // A bias the layer lacks has a gradient here too (its zeros took part): to scratch.
        let mut scratch: Vec<Option<Tensor>> =
            [(&g.q_bias, &lp.q), (&g.k_bias, &lp.k), (&g.v_bias, &lp.v)]
                .into_iter()
                .map(|(gb, w)| match gb {
                    Some(_) => Ok(None),
                    None => Tensor::zeros(&[w.shape()[0]], DType::F32, dev).map(Some),
                })
                .collect::<kernels::Result<_>>()?;
        let mut parts: Vec<&mut Tensor> = [&mut g.q_bias, &mut g.k_bias, &mut g.v_bias]
            .into_iter()
            .zip(scratch.iter_mut())
            .map(|(gb, s)| {
                gb.as_mut()
                    .or(s.as_mut())
                    .expect("a bias gradient or its scratch")
            })
            .collect();
        split_store(&db, &mut parts, GradStore::Add)?;
    }
    Ok(d_xn)
}

/// [`qkv_forward`] as three products (the CPU reference, and the GPU's default for now).
fn unfused_forward(xn: &Tensor, lp: &LayerParams, cfg: &ModelConfig, batch: &Batch) -> Result<Qkv> {
    let n = batch.num_tokens();
    let (h, k, d) = (
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
    );
    let theta = cfg.rope_theta as f32;
    let q = linear_rope(xn, &lp.q, lp.q_bias.as_ref(), batch, theta, h, d)?; // [N,H,D]
    let kk = linear_rope(xn, &lp.k, lp.k_bias.as_ref(), batch, theta, k, d)?; // [N,K,D]
    let v = linear_biased(xn, &lp.v, lp.v_bias.as_ref())?.reshape(&[n, k, d])?; // [N,K*D] -> [N,K,D]
    Ok(Qkv { q, k: kk, v })
}

/// x · wᵀ + b. With bf16 inputs and a bias: the GEMM writes its f32 accumulator and `bias_cast`
/// adds the bias in f32 and rounds once, the values of `linear` with a bias (which seeds an f32
/// output with the bias and adds the product with beta = 1, then casts) in fewer passes.
fn linear_biased(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    Ok(match b {
        Some(b) if x.dtype() == DType::BF16 => {
            let y = linear_out(x, w, None, DType::F32)?; // [N,O] f32, unrounded
            bias_cast(&y, b, DType::BF16)?
        }
        _ => linear(x, w, b)?,
    })
}

/// rope(x · wᵀ + b) as [N,heads,D]. With bf16 inputs and a bias: the GEMM writes f32 and
/// `rope_bias` adds the bias, rotates and rounds once (one pass for `bias_cast` + `rope`).
fn linear_rope(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    batch: &Batch,
    theta: f32,
    heads: usize,
    d: usize,
) -> Result<Tensor> {
    let n = batch.num_tokens();
    Ok(match b {
        Some(b) if x.dtype() == DType::BF16 => {
            let y = linear_out(x, w, None, DType::F32)?.reshape(&[n, heads, d])?; // [N,heads*D] -> [N,heads,D], f32
            rope_bias(&y, b, &batch.positions, theta, DType::BF16)?
        }
        _ => {
            let y = linear_biased(x, w, b)?.reshape(&[n, heads, d])?; // [N,heads*D] -> [N,heads,D]
            rope(&y, &batch.positions, theta)?
        }
    })
}

/// [`qkv_backward`] as three products' backwards adding into one d(xn) (the CPU reference, and the
/// GPU's default for now): the weight gradients queued on `lane` first, then the input gradients.
#[allow(clippy::too_many_arguments)]
fn unfused_backward(
    dq: Tensor,
    dk: Tensor,
    dv: Tensor,
    xn: Tensor,
    lp: &LayerParams,
    g: &mut LayerParams,
    store: GradStore,
    lane: &mut GradLane,
) -> Result<Tensor> {
    lane.weight_grad(&dq, &xn, &mut g.q, g.q_bias.as_mut(), store)?;
    lane.weight_grad(&dk, &xn, &mut g.k, g.k_bias.as_mut(), store)?;
    lane.weight_grad(&dv, &xn, &mut g.v, g.v_bias.as_mut(), store)?;
    let mut d_xn = linear_backward_input(&dq, &lp.q)?; // [N,C]
    linear_backward_input_acc(&dk, &lp.k, &mut d_xn)?; // +=
    linear_backward_input_acc(&dv, &lp.v, &mut d_xn)?; // +=
    [dq, dk, dv, xn].into_iter().for_each(|t| lane.keep(t));
    Ok(d_xn)
}
