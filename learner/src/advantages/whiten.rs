//! Masked whitening: (x - mean) / sqrt(var + ε) over the masked entries, with the unbiased (n-1)
//! variance as veRL's `masked_whiten`. `shift_mean = false` adds the mean back (only rescales).
//! Masked-out entries are returned as 0.

use anyhow::Result;

use crate::layout::check_len;
use crate::real::Real;

/// Masked mean and unbiased variance (variance 0 with fewer than 2 entries).
pub fn masked_mean_var<T: Real>(x: &[T], mask: &[T]) -> Result<(f64, f64)> {
    check_len(mask, x.len(), "mask", "masked mean")?;
    let n: f64 = mask.iter().map(|m| m.to_f64()).sum();
    if n == 0.0 {
        return Ok((0.0, 0.0));
    }
    let mean = x
        .iter()
        .zip(mask)
        .map(|(a, m)| a.to_f64() * m.to_f64())
        .sum::<f64>()
        / n;
    let ss: f64 = x
        .iter()
        .zip(mask)
        .map(|(a, m)| m.to_f64() * (a.to_f64() - mean).powi(2))
        .sum();
    let var = if n > 1.0 { ss / (n - 1.0) } else { 0.0 };
    Ok((mean, var))
}

pub fn masked_whiten<T: Real>(x: &[T], mask: &[T], shift_mean: bool, eps: f64) -> Result<Vec<T>> {
    let (mean, var) = masked_mean_var(x, mask)?;
    let rstd = 1.0 / (var + eps).sqrt();
    Ok(x.iter()
        .zip(mask)
        .map(|(a, m)| {
            if m.to_f64() > 0.0 {
                let mut y = (a.to_f64() - mean) * rstd;
                if !shift_mean {
                    y += mean;
                }
                T::from_f64(y)
            } else {
                T::zero()
            }
        })
        .collect())
}
