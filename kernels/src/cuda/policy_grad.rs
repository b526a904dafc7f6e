//! ∂loss/∂logp of the PPO surrogate on the GPU (cu/policy_grad.cu): one thread per token.

use super::launch::{kernel_source, run, Args, Grid, KernelSource};
use super::{device_of, empty};
use crate::ops::policy_grad::{KlGrad, PolicyGradInputs, PolicyGradScalars};
use crate::{DType, Error, Result, Tensor};

const SRC: KernelSource = kernel_source!("policy_grad");

pub fn policy_logprob_grad(x: &PolicyGradInputs, s: &PolicyGradScalars) -> Result<Tensor> {
    const OP: &str = "policy_logprob_grad";
    let dev = device_of(x.logprob, OP)?;
    let n = x.logprob.numel();
    let n32 = u32::try_from(n).map_err(|_| Error::msg(format!("{OP}: {n} tokens exceed u32")))?;
    let grad = empty(&dev, &[n], DType::F32)?;
    let (kl_kind, kl_coef) = match s.kl {
        None => (0u32, 0.0f32),
        Some((c, KlGrad::K1)) => (1, c),
        Some((c, KlGrad::K2)) => (2, c),
        Some((c, KlGrad::K3)) => (3, c),
    };
    let args = Args::new()
        .ptr(x.logprob, &dev, OP)?
        .ptr(x.old_logprob, &dev, OP)?
        .ptr(x.advantages, &dev, OP)?
        .ptr(x.weight, &dev, OP)?
        .opt_ptr(x.tis_weight, &dev, OP)?
        .opt_ptr(if kl_kind != 0 { x.ref_logprob } else { None }, &dev, OP)?
        .ptr(&grad, &dev, OP)?
        .u32(n32)
        .f32(s.lo)
        .f32(s.hi)
        .f32(s.dual_c)
        .u32(kl_kind)
        .f32(kl_coef);
    if n > 0 {
        run(&dev, &SRC, &[], OP, Grid::cover(n, 256), args)?;
    }
    Ok(grad)
}
