//! Next-token sampling on the GPU (`cu/sampling.cu`): one thread block per output row.

use super::launch::{kernel_source, run, Args, Grid, KernelSource};
use super::{device_of, suffix};
use crate::{Error, Result, Tensor};

const SRC: KernelSource = kernel_source!("sampling");
/// Threads per block; must match `SAMPLE_THREADS` in the kernel.
const THREADS: u32 = 1024;
/// Ids per warp tile of the sampling pass; must match `SAMPLE_TILE` in the kernel.
const TILE: usize = 512;
/// Dynamic shared memory the tile records may take (the kernel's static part is ~5 KB of an
/// H100/H200's 227 KB per block): vocabularies up to ~7.6M ids.
const MAX_SMEM: usize = 180 * 1024;

/// The kernel source, for compile tests.
pub fn source() -> KernelSource {
    kernel_source!("sampling")
}

fn u32_of(op: &'static str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::msg(format!("{op}: size {v} exceeds u32")))
}

pub fn sample_tokens(logits: &Tensor, spec: &Tensor, out: &mut Tensor) -> Result<()> {
    const OP: &str = "sample_tokens";
    let dev = device_of(logits, OP)?;
    let v = logits.shape()[1];
    let (s, cols) = (spec.shape()[0], spec.shape()[1]);
    // Rows are not checked against R here (that would need the spec on the host); the engine
    // builds them from its own batch.
    let args = Args::new()
        .ptr(logits, &dev, OP)?
        .ptr(spec, &dev, OP)?
        .ptr(out, &dev, OP)?
        .u32(u32_of(OP, v)?)
        .u32(u32_of(OP, cols)?);
    let func = format!("sample_tokens_{}", suffix(logits.dtype(), OP)?);
    // Per warp tile of TILE ids, its f64 sum and f32 max in dynamic shared memory.
    let smem = v.div_ceil(TILE) * 12;
    if smem > MAX_SMEM {
        return Err(Error::msg(format!(
            "{OP}: a vocabulary of {v} needs {smem} B of shared memory per row on the GPU, \
             more than the {MAX_SMEM} B supported"
        )));
    }
    run(
        &dev,
        &SRC,
        &[],
        &func,
        Grid::d1(u32_of(OP, s)?, THREADS).with_smem(smem as u32),
        args,
    )
}
