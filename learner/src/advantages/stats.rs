//! Batch statistics reported with the advantages: explained variance of the critic and the
//! mean / std of values, returns and advantages (metrics.md names).

use anyhow::Result;

use super::whiten::masked_mean_var;
use crate::metrics::Metrics;
use crate::real::Real;

/// 1 - Var(R - V) / Var(R) over masked tokens: 1 is a perfect critic, 0 no better than a constant.
/// Returns NaN-free 0 when the returns have no variance.
pub fn explained_variance<T: Real>(values: &[T], returns: &[T], mask: &[T]) -> Result<f64> {
    let diff: Vec<f64> = returns
        .iter()
        .zip(values)
        .map(|(r, v)| r.to_f64() - v.to_f64())
        .collect();
    let mask64: Vec<f64> = mask.iter().map(|m| m.to_f64()).collect();
    let ret64: Vec<f64> = returns.iter().map(|r| r.to_f64()).collect();
    let (_, var_r) = masked_mean_var(&ret64, &mask64)?;
    let (_, var_d) = masked_mean_var(&diff, &mask64)?;
    Ok(if var_r > 0.0 {
        1.0 - var_d / var_r
    } else {
        0.0
    })
}

/// critic/values|returns|advantages mean and std, critic/vf_explained_var (values and returns
/// optional: GRPO-style runs have no critic).
pub fn advantage_metrics<T: Real>(
    advantages: &[T],
    returns: Option<&[T]>,
    values: Option<&[T]>,
    mask: &[T],
) -> Result<Metrics> {
    let mut m = Metrics::new();
    let n: f64 = mask.iter().map(|x| x.to_f64()).sum();
    let mut put = |name: &str, x: &[T]| -> Result<()> {
        let (mean, var) = masked_mean_var(x, mask)?;
        m.mean(&format!("critic/{name}/mean"), mean, n);
        m.mean(&format!("critic/{name}/std"), var.sqrt(), n);
        Ok(())
    };
    put("advantages", advantages)?;
    if let Some(r) = returns {
        put("returns", r)?;
    }
    if let Some(v) = values {
        put("values", v)?;
    }
    if let (Some(r), Some(v)) = (returns, values) {
        m.mean(
            "critic/vf_explained_var",
            explained_variance(v, r, mask)?,
            n,
        );
    }
    Ok(m)
}
