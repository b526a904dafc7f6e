//! Fused log-softmax gather on the GPU: one block per row, online max / sum / entropy over V.

use super::launch::{kernel_source, run, Args, Grid, KernelSource};
use super::{device_of, empty, suffix};
use crate::{DType, Error, Result, Tensor};

const SRC: KernelSource = kernel_source!("logsoftmax");
const THREADS: u32 = 512;

/// Targets ≥ V other than NO_TARGET are an error, as on the CPU (copies N u32s to the host).
fn check_targets(op: &'static str, targets: &Tensor, v: usize) -> Result<()> {
    let ts = targets.to_vec_u32()?;
    match ts
        .iter()
        .enumerate()
        .find(|(_, &t)| t != crate::ops::NO_TARGET && t as usize >= v)
    {
        Some((n, t)) => Err(Error::msg(format!(
            "{op}: target {t} at position {n} is out of range for a vocabulary of {v}"
        ))),
        None => Ok(()),
    }
}

fn u32_dim(op: &'static str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::msg(format!("{op}: dimension {v} exceeds u32")))
}

pub fn logsoftmax_gather(
    logits: &Tensor,
    targets: &Tensor,
    inv_temp: f32,
) -> Result<(Tensor, Tensor, Tensor)> {
    const OP: &str = "logsoftmax_gather";
    let dev = device_of(logits, OP)?;
    let (n, v) = logits.dims2(OP)?;
    check_targets(OP, targets, v)?;
    let logprob = empty(&dev, &[n], DType::F32)?;
    let entropy = empty(&dev, &[n], DType::F32)?;
    let lse = empty(&dev, &[n], DType::F32)?;
    let args = Args::new()
        .ptr(logits, &dev, OP)?
        .ptr(targets, &dev, OP)?
        .f32(inv_temp)
        .ptr(&logprob, &dev, OP)?
        .ptr(&entropy, &dev, OP)?
        .ptr(&lse, &dev, OP)?
        .u32(u32_dim(OP, n)?)
        .u32(u32_dim(OP, v)?);
    let func = format!("logsoftmax_gather_{}", suffix(logits.dtype(), OP)?);
    if n > 0 {
        let g = Grid::d1(n.min(65535 * 4) as u32, THREADS);
        run(&dev, &SRC, &[], &func, g, args)?;
    }
    Ok((logprob, entropy, lse))
}

pub fn logsoftmax_gather_backward(
    dlogprob: &Tensor,
    dentropy: Option<&Tensor>,
    logits: &Tensor,
    targets: &Tensor,
    lse: &Tensor,
    inv_temp: f32,
) -> Result<Tensor> {
    const OP: &str = "logsoftmax_gather_backward";
    let dev = device_of(logits, OP)?;
    let (n, v) = logits.dims2(OP)?;
    check_targets(OP, targets, v)?;
    let dlogits = empty(&dev, &[n, v], logits.dtype())?;
    let args = Args::new()
        .ptr(dlogprob, &dev, OP)?
        .opt_ptr(dentropy, &dev, OP)?
        .ptr(logits, &dev, OP)?
        .ptr(targets, &dev, OP)?
        .ptr(lse, &dev, OP)?
        .f32(inv_temp)
        .ptr(&dlogits, &dev, OP)?
        .u32(u32_dim(OP, n)?)
        .u32(u32_dim(OP, v)?);
    let func = format!("logsoftmax_gather_backward_{}", suffix(logits.dtype(), OP)?);
    if n > 0 {
        let g = Grid::d1(n.min(65535 * 4) as u32, THREADS);
        run(&dev, &SRC, &[], &func, g, args)?;
    }
    Ok(dlogits)
}
