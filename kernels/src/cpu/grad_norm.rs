//! Sum of squares on the CPU, accumulated in f64.

use super::f32s;
use crate::{Result, Tensor};

pub fn sum_squares(x: &Tensor) -> Result<f64> {
    Ok(f32s("sum_squares", x)?
        .iter()
        .map(|&v| (v as f64) * (v as f64))
        .sum())
}
