//! Causal grouped-query attention over sequences packed back to back (varlen), flash style: the
//! forward saves the log-sum-exp of each query row's scores instead of any T×T matrix, and the
//! backward recomputes the probabilities from it.
//!
//! Sequence s owns tokens cu_seqlens[s]..cu_seqlens[s+1]; token i of it attends to tokens
//! cu_seqlens[s]..=i of the same sequence. Query head h reads kv head h / (H / K).

use super::{check_dtype, check_float, check_same, check_shape};
use crate::{DType, Device, Error, Result, Tensor};

/// q[N,H,D], k[N,K,D], v[N,K,D], cu_seqlens[S+1] U32 -> (out[N,H,D], lse[N,H] F32), where
/// out = softmax(scale · q kᵀ + causal mask) v per sequence and head, and lse is the natural log
/// of the softmax denominator (of the scaled scores).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cu_seqlens: &Tensor,
    scale: f32,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "attention";
    check_qkv(OP, q, k, v, cu_seqlens)?;
    match q.device() {
        Device::Cpu => crate::cpu::attention::attention(q, k, v, cu_seqlens, scale),
        Device::Cuda(_) => crate::cuda::attention::attention(q, k, v, cu_seqlens, scale),
    }
}

/// Backward of [`attention`] from dout[N,H,D] and the forward's out and lse:
/// returns (dq[N,H,D], dk[N,K,D], dv[N,K,D]) in the inputs' dtype.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    dout: &Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    cu_seqlens: &Tensor,
    scale: f32,
) -> Result<(Tensor, Tensor, Tensor)> {
    const OP: &str = "attention_backward";
    check_backward(OP, dout, q, k, v, out, lse, cu_seqlens)?;
    match q.device() {
        Device::Cpu => {
            crate::cpu::attention::attention_backward(dout, q, k, v, out, lse, cu_seqlens, scale)
        }
        Device::Cuda(_) => crate::cuda::attention::attention_backward(
            dout, q, k, v, out, lse, cu_seqlens, scale, None,
        ),
    }
}

/// [`attention_backward`] for q and k that `rope` rotated (positions `pos` [N] U32, base
/// `theta`): returns the gradients of the unrotated q and k, rope_backward(dq) and
/// rope_backward(dk), with dv. On the GPU the inverse rotation is applied as dq and dk are stored
/// (no separate pass over them; in bf16 one rounding fewer than the two ops, whose dq and dk are
/// rounded before the rotation), on the CPU it is the two ops.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_rope(
    dout: &Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    cu_seqlens: &Tensor,
    scale: f32,
    pos: &Tensor,
    theta: f32,
) -> Result<(Tensor, Tensor, Tensor)> {
    const OP: &str = "attention_backward_rope";
    // The rope checks (D even, theta, pos [N] U32 on q's device) on q; k shares N and D.
    super::rope::check_rope(OP, q, pos, theta)?;
    match q.device() {
        Device::Cpu => {
            let (dq, dk, dv) = attention_backward(dout, q, k, v, out, lse, cu_seqlens, scale)?;
            Ok((
                crate::cpu::rope::rope_backward(&dq, pos, theta)?,
                crate::cpu::rope::rope_backward(&dk, pos, theta)?,
                dv,
            ))
        }
        Device::Cuda(_) => {
            check_backward(OP, dout, q, k, v, out, lse, cu_seqlens)?;
            let rope = crate::cuda::attention::Rope { pos, theta };
            crate::cuda::attention::attention_backward(
                dout,
                q,
                k,
                v,
                out,
                lse,
                cu_seqlens,
                scale,
                Some(rope),
            )
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn check_backward(
    op: &'static str,
    dout: &Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    cu_seqlens: &Tensor,
) -> Result<()> {
    check_qkv(op, q, k, v, cu_seqlens)?;
    let (n, h, _d) = q.dims3(op)?;
    check_same(op, q, &[dout, out])?;
    check_shape(op, "dout", dout, q.shape())?;
    check_shape(op, "out", out, q.shape())?;
    check_dtype(op, lse, DType::F32)?;
    q.check_same_device(lse, op)?;
    check_shape(op, "lse", lse, &[n, h])
}

fn check_qkv(
    op: &'static str,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cu_seqlens: &Tensor,
) -> Result<()> {
    check_float(op, q)?;
    let (n, h, d) = q.dims3(op)?;
    let (_, kh, _) = k.dims3(op)?;
    check_same(op, q, &[k, v])?;
    if kh == 0 || h % kh != 0 {
        return Err(Error::shape(
            op,
            format!("query heads H = {h} must be a multiple of key/value heads K = {kh}"),
        ));
    }
    check_shape(op, "k", k, &[n, kh, d])?;
    check_shape(op, "v", v, &[n, kh, d])?;
    check_dtype(op, cu_seqlens, DType::U32)?;
    q.check_same_device(cu_seqlens, op)?;
    if cu_seqlens.rank() != 1 || cu_seqlens.numel() == 0 {
        return Err(Error::shape(
            op,
            format!(
                "cu_seqlens must be rank 1 [S+1] with S+1 >= 1, got shape {:?}",
                cu_seqlens.shape()
            ),
        ));
    }
    Ok(())
}
