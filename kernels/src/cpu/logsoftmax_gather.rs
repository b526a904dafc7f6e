//! Fused log-softmax + gather + entropy on the CPU: two passes over each row of logits (max, then
//! sums of e^(z−max)); exp in f32, row sums in f64; no probability buffer.

use super::{f32s, u32s};
use crate::ops::NO_TARGET;
use crate::{Error, Result, Tensor};

fn check_targets(op: &'static str, targets: &[u32], v: usize) -> Result<()> {
    match targets
        .iter()
        .enumerate()
        .find(|(_, &t)| t != NO_TARGET && t as usize >= v)
    {
        Some((n, t)) => Err(Error::msg(format!(
            "{op}: target {t} at position {n} is out of range for a vocabulary of {v}"
        ))),
        None => Ok(()),
    }
}

pub fn logsoftmax_gather(
    logits: &Tensor,
    targets: &Tensor,
    inv_temp: f32,
) -> Result<(Tensor, Tensor, Tensor)> {
    const OP: &str = "logsoftmax_gather";
    let (n, v) = logits.dims2(OP)?;
    let (xs, ts) = (f32s(OP, logits)?, u32s(OP, targets)?);
    check_targets(OP, ts, v)?;
    let (mut logprob, mut entropy, mut lse) = (vec![0.0f32; n], vec![0.0f32; n], vec![0.0f32; n]);
    for r in 0..n {
        let row = &xs[r * v..(r + 1) * v];
        (logprob[r], entropy[r], lse[r]) = row_forward(row, ts[r], inv_temp);
    }
    Ok((
        super::tensor(logprob, &[n])?,
        super::tensor(entropy, &[n])?,
        super::tensor(lse, &[n])?,
    ))
}

/// dz_v = dlogprob·(1[v = t] − p_v) − dentropy·p_v·(log p_v + entropy);  dlogits = inv_temp · dz.
pub fn logsoftmax_gather_backward(
    dlogprob: &Tensor,
    dentropy: Option<&Tensor>,
    logits: &Tensor,
    targets: &Tensor,
    lse: &Tensor,
    inv_temp: f32,
) -> Result<Tensor> {
    const OP: &str = "logsoftmax_gather_backward";
    let (n, v) = logits.dims2(OP)?;
    let (xs, ts) = (f32s(OP, logits)?, u32s(OP, targets)?);
    let (dlp, ls) = (f32s(OP, dlogprob)?, f32s(OP, lse)?);
    let dent = dentropy.map(|t| f32s(OP, t)).transpose()?;
    check_targets(OP, ts, v)?;
    let mut dx = vec![0.0f32; n * v];
    for r in 0..n {
        let row = &xs[r * v..(r + 1) * v];
        let dl = if ts[r] == NO_TARGET { 0.0 } else { dlp[r] };
        let de = dent.map_or(0.0, |d| d[r]);
        row_backward(
            row,
            ts[r],
            ls[r],
            dl,
            de,
            inv_temp,
            &mut dx[r * v..(r + 1) * v],
        );
    }
    super::tensor(dx, &[n, v])
}

/// (logprob, entropy, lse) of one row of logits; logprob 0 when `target` is [`NO_TARGET`]
/// (the target is in range otherwise).
pub(crate) fn row_forward(row: &[f32], target: u32, inv_temp: f32) -> (f32, f32, f32) {
    let m = row
        .iter()
        .map(|&x| x * inv_temp)
        .fold(f32::NEG_INFINITY, f32::max);
    // s = Σ e^(z−m), sz = Σ e^(z−m)(z−m); then lse = m + ln s and
    // entropy = lse − Σ p z = ln s − sz / s.
    // exp in f32 (as PyTorch's f32 log_softmax), sums in f64 (vocabularies are long).
    let (mut s, mut sz) = (0.0f64, 0.0f64);
    for &x in row {
        let zm = x * inv_temp - m;
        let e = zm.exp();
        s += e as f64;
        sz += (e * zm) as f64;
    }
    let l = m as f64 + s.ln();
    let logprob = if target == NO_TARGET {
        0.0
    } else {
        ((row[target as usize] * inv_temp) as f64 - l) as f32
    };
    (logprob, (s.ln() - sz / s) as f32, l as f32)
}

/// d(logits) of one row into `out`, given its lse, d(logprob) `dl` (0 for no target) and
/// d(entropy) `de`.
pub(crate) fn row_backward(
    row: &[f32],
    target: u32,
    l: f32,
    dl: f32,
    de: f32,
    inv_temp: f32,
    out: &mut [f32],
) {
    // The entropy term needs H = Σ p (lse − z): one extra pass, only when it is used.
    let h = if de != 0.0 {
        let sum: f64 = row
            .iter()
            .map(|&x| {
                let logp = x * inv_temp - l;
                (-logp.exp() * logp) as f64
            })
            .sum();
        sum as f32
    } else {
        0.0
    };
    let target = target as usize; // never matches a column when it is NO_TARGET
    for (k, (o, &x)) in out.iter_mut().zip(row).enumerate() {
        let logp = x * inv_temp - l;
        let p = logp.exp();
        let hit = if k == target { 1.0 } else { 0.0 };
        *o = inv_temp * (dl * (hit - p) - de * p * (logp + h));
    }
}
