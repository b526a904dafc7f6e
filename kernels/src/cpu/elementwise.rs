//! Elementwise f32 helpers.

use super::{f32s, f32s_mut};
use crate::{Result, Tensor};

pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (x, y) = (f32s("add", a)?, f32s("add", b)?);
    super::tensor(x.iter().zip(y).map(|(p, q)| p + q).collect(), a.shape())
}

pub fn add_inplace(a: &mut Tensor, b: &Tensor) -> Result<()> {
    let y = f32s("add_inplace", b)?;
    for (p, q) in f32s_mut("add_inplace", a)?.iter_mut().zip(y) {
        *p += q;
    }
    Ok(())
}

pub fn scale_inplace(x: &mut Tensor, s: f32) -> Result<()> {
    f32s_mut("scale_inplace", x)?
        .iter_mut()
        .for_each(|p| *p *= s);
    Ok(())
}

pub fn fill_inplace(x: &mut Tensor, v: f32) -> Result<()> {
    f32s_mut("fill_inplace", x)?.fill(v);
    Ok(())
}
