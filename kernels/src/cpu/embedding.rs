//! Row gather and scatter-add on the CPU.

use super::{f32s, f32s_mut, u32s};
use crate::{Error, Result, Tensor};

pub fn gather_rows(table: &Tensor, idx: &Tensor) -> Result<Tensor> {
    const OP: &str = "gather_rows";
    let (r, c) = table.dims2(OP)?;
    let (t, ids) = (f32s(OP, table)?, u32s(OP, idx)?);
    let mut out = Vec::with_capacity(ids.len() * c);
    for (n, &id) in ids.iter().enumerate() {
        let row = check_id(OP, n, id, r)?;
        out.extend_from_slice(&t[row * c..(row + 1) * c]);
    }
    super::tensor(out, &[ids.len(), c])
}

pub fn scatter_add_rows(dst: &mut Tensor, idx: &Tensor, src: &Tensor) -> Result<()> {
    const OP: &str = "scatter_add_rows";
    let (r, c) = dst.dims2(OP)?;
    let (ids, s) = (u32s(OP, idx)?, f32s(OP, src)?);
    // Validate every id before touching dst, so an error leaves dst unchanged.
    for (n, &id) in ids.iter().enumerate() {
        check_id(OP, n, id, r)?;
    }
    let d = f32s_mut(OP, dst)?;
    for (n, &id) in ids.iter().enumerate() {
        let row = id as usize;
        let out = &mut d[row * c..(row + 1) * c];
        out.iter_mut()
            .zip(&s[n * c..(n + 1) * c])
            .for_each(|(o, x)| *o += x);
    }
    Ok(())
}

fn check_id(op: &'static str, n: usize, id: u32, rows: usize) -> Result<usize> {
    if (id as usize) < rows {
        Ok(id as usize)
    } else {
        Err(Error::msg(format!(
            "{op}: id {id} at position {n} is out of range for a table of {rows} rows"
        )))
    }
}
