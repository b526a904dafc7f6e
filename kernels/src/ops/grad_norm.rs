//! Sum of squares of a tensor, for the global gradient norm: norm = sqrt(Σ over tensors of
//! sum_squares). Clipping then is `scale_inplace(grad, max_norm / norm)`, or, without any
//! device-to-host read before the update, [`grad_clip`] + `adamw_step_many_clipped`.

use super::check_float;
use crate::{Device, Error, Result, Tensor};

/// Σ x² as a host f64 (accumulated in f64 on the CPU).
pub fn sum_squares(x: &Tensor) -> Result<f64> {
    const OP: &str = "sum_squares";
    check_float(OP, x)?;
    match x.device() {
        Device::Cpu => crate::cpu::grad_norm::sum_squares(x),
        Device::Cuda(_) => crate::cuda::sum_squares::sum_squares(x),
    }
}

/// [`sum_squares`] of each tensor of `xs`, in order. On the GPU every sum lands in one device
/// buffer that is read back once (one synchronisation for all tensors, not one per tensor); the
/// values are the same as calling [`sum_squares`] on each.
pub fn sum_squares_each(xs: &[&Tensor]) -> Result<Vec<f64>> {
    const OP: &str = "sum_squares";
    for x in xs {
        check_float(OP, x)?;
    }
    if on_one_gpu(xs) {
        crate::cuda::sum_squares::sum_squares_each(xs)
    } else {
        xs.iter().map(|x| sum_squares(x)).collect()
    }
}

fn on_one_gpu(xs: &[&Tensor]) -> bool {
    match xs.first().map(|x| x.device()) {
        Some(d @ Device::Cuda(_)) => xs.iter().all(|x| x.device().same(d)),
        _ => false,
    }
}

/// The clip decision of one optimiser step as the host sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClipDecision {
    /// The global norm sqrt(Σ sum_squares), before clipping.
    pub norm: f64,
    /// The factor the gradients are multiplied by (1 when not clipped, 0 when skipped).
    pub scale: f64,
    /// True when the norm is not finite: the update must leave everything alone.
    pub skipped: bool,
}

impl ClipDecision {
    /// PyTorch's `clip_grad_norm_` rule: scale = max_norm / (norm + 1e-6) when that is below 1;
    /// a non-finite norm skips the step. The GPU's `grad_clip_finalize` computes exactly this.
    pub fn from_norm(norm: f64, max_norm: Option<f64>) -> ClipDecision {
        if !norm.is_finite() {
            return ClipDecision {
                norm,
                scale: 0.0,
                skipped: true,
            };
        }
        let scale = match max_norm {
            Some(max) if max / (norm + 1e-6) < 1.0 => max / (norm + 1e-6),
            _ => 1.0,
        };
        ClipDecision {
            norm,
            scale,
            skipped: false,
        }
    }
}

/// The global gradient norm and clip decision of [`grad_clip`]: on the GPU it stays in device
/// memory (the AdamW update reads it there) until [`GradClip::read`].
pub struct GradClip {
    inner: ClipState,
}

enum ClipState {
    Host(ClipDecision),
    Cuda(crate::cuda::sum_squares::DeviceClip),
}

impl GradClip {
    /// The decision on the host. On the GPU this copies 24 bytes back and so waits for all the
    /// work queued before it: call it after the update is queued.
    pub fn read(&self) -> Result<ClipDecision> {
        match &self.inner {
            ClipState::Host(d) => Ok(*d),
            ClipState::Cuda(c) => {
                let [norm, scale, skip] = c.read()?;
                Ok(ClipDecision {
                    norm,
                    scale,
                    skipped: skip != 0.0,
                })
            }
        }
    }

    /// The device-side decision, when there is one.
    pub(crate) fn device(&self) -> Option<&crate::cuda::sum_squares::DeviceClip> {
        match &self.inner {
            ClipState::Host(_) => None,
            ClipState::Cuda(c) => Some(c),
        }
    }
}

/// The global norm of `grads` (sqrt of Σ [`sum_squares`], the sums added in order) and the clip
/// decision against `max_norm` (`None`: never clip), see [`ClipDecision::from_norm`]. On one GPU
/// the norm and the decision are computed and kept on the device: nothing waits for the host.
pub fn grad_clip(grads: &[&Tensor], max_norm: Option<f64>) -> Result<GradClip> {
    const OP: &str = "grad_clip";
    if let Some(m) = max_norm {
        if !(m.is_finite() && m >= 0.0) {
            return Err(Error::msg(format!(
                "{OP}: max_norm must be finite and non-negative, got {m}"
            )));
        }
    }
    for x in grads {
        check_float(OP, x)?;
    }
    let inner = if on_one_gpu(grads) {
        ClipState::Cuda(crate::cuda::sum_squares::grad_clip(grads, max_norm)?)
    } else {
        let norm = sum_squares_each(grads)?.iter().sum::<f64>().sqrt();
        ClipState::Host(ClipDecision::from_norm(norm, max_norm))
    };
    Ok(GradClip { inner })
}
