//! The scalar head of critics and reward models (HF `*ForSequenceClassification` with one label):
//! value[n] = hidden[n] · score.weight[0], at every position. A critic uses every position; a
//! reward model reads the last token of each sequence, as HF's pooled output does.

use anyhow::{bail, Context, Result};
use kernels::ops::linear::linear_out;
use kernels::ops::{cast, linear_backward, GradStore};
use kernels::{DType, Tensor};

use super::backward::check_grads;
use super::batch::Batch;
use crate::params::Params;

/// value [N] f32 = hidden [N,C] · score.weightᵀ, taken from the f32 accumulator also when the
/// hidden states are bf16 (no rounding of the value itself).
pub fn values(params: &Params, hidden: &Tensor) -> Result<Tensor> {
    let w = score_weight(params)?;
    let (n, _c) = hidden.dims2("values")?;
    Ok(linear_out(hidden, w, None, DType::F32)?.reshape(&[n])?) // [N,1] -> [N]
}

/// Backward of [`values`]: stores score.weight's gradient (added or written as `store` says) from
/// d(value) [N] f32 and returns d(hidden) [N,C] in the hidden states' dtype.
pub fn values_backward(
    params: &Params,
    hidden: &Tensor,
    d_value: &Tensor,
    grads: &mut Params,
    store: GradStore,
) -> Result<Tensor> {
    check_grads(grads)?;
    let w = score_weight(params)?;
    let (n, _c) = hidden.dims2("values_backward")?;
    if d_value.shape() != [n] || d_value.dtype() != DType::F32 {
        bail!(
            "d_value must be [{n}] f32, got {:?} {}",
            d_value.shape(),
            d_value.dtype()
        );
    }
    let dv = d_value.try_clone()?.reshape(&[n, 1])?; // [N] -> [N,1]
    let dv = if hidden.dtype() == DType::F32 {
        dv
    } else {
        cast(&dv, hidden.dtype())?
    };
    let gw = grads
        .score
        .as_mut()
        .context("the gradient buffer has no score.weight")?;
    Ok(linear_backward(&dv, hidden, w, gw, None, store)?)
}

/// The value at the last token of each sequence (the reward of a reward model), on the host.
pub fn last_token_scores(values: &Tensor, batch: &Batch) -> Result<Vec<f32>> {
    let v = values.to_vec_f32()?;
    if v.len() != batch.num_tokens() {
        bail!("{} values for {} tokens", v.len(), batch.num_tokens());
    }
    Ok(batch.seq_ranges().map(|r| v[r.end - 1]).collect())
}

fn score_weight(params: &Params) -> Result<&Tensor> {
    let w = params.score.as_ref().context(
        "this model has no score head (score.weight); load a *ForSequenceClassification checkpoint",
    )?;
    if w.shape()[0] != 1 {
        bail!(
            "score.weight has {} rows; a critic or reward model needs exactly one label",
            w.shape()[0]
        );
    }
    Ok(w)
}
