//! AdamW with f32 master weights, PyTorch `torch.optim.AdamW` semantics (single-tensor path):
//!
//! ```text
//! master *= 1 − lr·weight_decay                  (decoupled weight decay, before the moments)
//! m       = lerp(m, grad, 1 − beta1)
//! v       = beta2·v + (1 − beta2)·grad²
//! master += −(lr / (1 − beta1^step)) · m / (sqrt(v) / sqrt(1 − beta2^step) + eps)
//! ```
//!
//! `step` counts from 1 (the value after PyTorch increments it). The bias corrections are computed
//! in f64 on the host, as PyTorch does with Python floats, and enter the per-element f32 arithmetic
//! as the scalars of [`AdamWScalars`]; every backend applies exactly those.

use super::grad_norm::GradClip;
use super::{check_dtype, check_shape};
use crate::{DType, Device, Error, Result, Tensor};

/// Hyper-parameters of one AdamW step (Python floats in PyTorch, hence f64).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWParams {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// 1 for the first step.
    pub step: u64,
}

/// The f32 scalars the per-element update uses, derived from [`AdamWParams`] on the host.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWScalars {
    /// 1 − lr·weight_decay.
    pub decay: f32,
    /// The lerp weight 1 − beta1.
    pub one_minus_beta1: f32,
    pub beta2: f32,
    pub one_minus_beta2: f32,
    /// −lr / (1 − beta1^step).
    pub neg_step_size: f32,
    /// sqrt(1 − beta2^step).
    pub bias_correction2_sqrt: f32,
    pub eps: f32,
}

impl AdamWParams {
    /// Checks the hyper-parameters and derives the per-element scalars.
    pub fn scalars(&self) -> Result<AdamWScalars> {
        let p = self;
        let bad = |what: &str| Err(Error::msg(format!("adamw_step: {what} (got {p:?})")));
        if p.step == 0 {
            return bad("step counts from 1");
        }
        if !(0.0..1.0).contains(&p.beta1) || !(0.0..1.0).contains(&p.beta2) {
            return bad("beta1 and beta2 must lie in [0, 1)");
        }
        let non_negative = |x: f64| x.is_finite() && x >= 0.0;
        if !(non_negative(p.lr) && non_negative(p.eps) && non_negative(p.weight_decay)) {
            return bad("lr, eps and weight_decay must be finite and non-negative");
        }
        let step = p.step as f64;
        let bias_correction1 = 1.0 - p.beta1.powf(step);
        let bias_correction2 = 1.0 - p.beta2.powf(step);
        Ok(AdamWScalars {
            decay: (1.0 - p.lr * p.weight_decay) as f32,
            one_minus_beta1: (1.0 - p.beta1) as f32,
            beta2: p.beta2 as f32,
            one_minus_beta2: (1.0 - p.beta2) as f32,
            neg_step_size: (-(p.lr / bias_correction1)) as f32,
            bias_correction2_sqrt: bias_correction2.sqrt() as f32,
            eps: p.eps as f32,
        })
    }
}

/// One AdamW step on F32 `master`, `m`, `v` (updated in place) from F32 `grad`, all of one shape.
/// When `working` is given (BF16, same shape) it receives the updated master rounded to bf16.
pub fn adamw_step(
    master: &mut Tensor,
    grad: &Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
    params: &AdamWParams,
    working: Option<&mut Tensor>,
) -> Result<()> {
    const OP: &str = "adamw_step";
    let shape = master.shape().to_vec();
    for (name, t) in [("master", &*master), ("grad", grad), ("m", &*m), ("v", &*v)] {
        check_dtype(OP, t, DType::F32)?;
        master.check_same_device(t, OP)?;
        check_shape(OP, name, t, &shape)?;
    }
    if let Some(w) = &working {
        check_dtype(OP, w, DType::BF16)?;
        master.check_same_device(w, OP)?;
        check_shape(OP, "working copy", w, &shape)?;
    }
    let scalars = params.scalars()?;
    match master.device() {
        Device::Cpu => crate::cpu::adamw::adamw_step(master, grad, 1.0, m, v, &scalars, working),
        Device::Cuda(_) => crate::cuda::adamw::adamw_step(master, grad, m, v, &scalars, working),
    }
}

/// One parameter of [`adamw_step_many`]: its buffers, as [`adamw_step`] takes them, and its
/// weight decay.
pub struct AdamWItem<'a> {
    pub master: &'a mut Tensor,
    pub grad: &'a mut Tensor,
    pub m: &'a mut Tensor,
    pub v: &'a mut Tensor,
    pub working: Option<&'a mut Tensor>,
    pub weight_decay: f64,
}

/// [`adamw_step`] over many parameters, each with its own weight decay (`params.weight_decay` is
/// not used), with every gradient multiplied by `grad_scale` (gradient clipping; 1 for none). The
/// gradient buffers are read, never written: the update equals `scale_inplace` then
/// [`adamw_step`] per parameter, but the scaled gradient only exists in registers (writing it
/// back cost 2 GB of traffic a step at Qwen2.5-0.5B). On one GPU it is a single launch.
pub fn adamw_step_many(
    items: &mut [AdamWItem],
    params: &AdamWParams,
    grad_scale: f32,
) -> Result<()> {
    step_many(items, params, Scale::Host(grad_scale))
}

/// [`adamw_step_many`] with the gradient scale of a [`GradClip`] (`ops::grad_clip`): its scale,
/// or no update at all when it skips the step (non-finite norm). On one GPU the decision is read
/// from device memory by the update kernel, so nothing waits for the host.
pub fn adamw_step_many_clipped(
    items: &mut [AdamWItem],
    params: &AdamWParams,
    clip: &GradClip,
) -> Result<()> {
    step_many(items, params, Scale::Clip(clip))
}

enum Scale<'a> {
    Host(f32),
    Clip(&'a GradClip),
}

fn step_many(items: &mut [AdamWItem], params: &AdamWParams, scale: Scale) -> Result<()> {
    const OP: &str = "adamw_step_many";
    let mut scalars = Vec::with_capacity(items.len());
    for it in items.iter() {
        let shape = it.master.shape().to_vec();
        for (name, t) in [
            ("master", &*it.master),
            ("grad", &*it.grad),
            ("m", &*it.m),
            ("v", &*it.v),
        ] {
            check_dtype(OP, t, DType::F32)?;
            it.master.check_same_device(t, OP)?;
            check_shape(OP, name, t, &shape)?;
        }
        if let Some(w) = &it.working {
            check_dtype(OP, w, DType::BF16)?;
            it.master.check_same_device(w, OP)?;
            check_shape(OP, "working copy", w, &shape)?;
        }
        scalars.push(
            AdamWParams {
                weight_decay: it.weight_decay,
                ..*params
            }
            .scalars()?,
        );
    }
    let on_one_gpu = match items.first().map(|it| it.master.device()) {
        Some(d @ Device::Cuda(_)) => items.iter().all(|it| it.master.device().same(d)),
        _ => false,
    };
    use crate::cuda::adamw::GradScale;
    let grad_scale = match scale {
        Scale::Host(f) => f,
        Scale::Clip(c) => match c.device() {
            Some(d) if on_one_gpu => {
                return crate::cuda::adamw::adamw_step_many(items, &scalars, GradScale::Device(d))
            }
            _ => {
                let d = c.read()?;
                if d.skipped {
                    return Ok(());
                }
                d.scale as f32
            }
        },
    };
    if on_one_gpu {
        return crate::cuda::adamw::adamw_step_many(items, &scalars, GradScale::Host(grad_scale));
    }
    for (it, s) in items.iter_mut().zip(&scalars) {
        let working = it.working.as_deref_mut();
        match it.master.device() {
            Device::Cpu => crate::cpu::adamw::adamw_step(
                it.master, it.grad, grad_scale, it.m, it.v, s, working,
            )?,
            // Parameters spread over several GPUs (not one launch): the gradients stay as they
            // are (see above), so the single-tensor kernel gets a scaled copy.
            Device::Cuda(_) => {
                let scaled;
                let grad: &Tensor = if grad_scale != 1.0 {
                    let mut g = it.grad.try_clone()?;
                    super::scale_inplace(&mut g, grad_scale)?;
                    scaled = g;
                    &scaled
                } else {
                    it.grad
                };
                crate::cuda::adamw::adamw_step(it.master, grad, it.m, it.v, s, working)?
            }
        }
    }
    Ok(())
}
