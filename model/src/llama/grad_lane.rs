//! The decoder backward's weight gradients on a side lane of the GPU (opt-in,
//! `REALIGN_TRAIN_OVERLAP`), beside the chain of input gradients.
//!
//! Why: in a layer's backward only the input gradients are on the critical path (each feeds the
//! next op); the weight gradients (dW = dyᵀ x, about half the backward's GEMM FLOPs) are read by
//! nothing until the optimiser. Queued on a second stream, their compute-bound GEMMs can fill the
//! SMs that the input chain's latency-bound attention backward and memory-bound row kernels leave
//! idle. The same ops run either way (`linear_backward_weight`), so the gradients are the same
//! bits; only where they are queued changes.
//!
//! Ordering: before each weight gradient the lane catches up with the device's stream (its dy and x
//! are ready). Its inputs are kept alive and unchanged (moved into the lane's keep list; the
//! residual gradient, which the input chain would add a norm's gradient to in place, gets the sum
//! in a new tensor instead) until the device's stream has waited for the work that reads them: a
//! layer's work is waited for at the end of the next layer's input chain (one layer of slack), and
//! everything at [`GradLane::finish`] (and on drop), before the optimiser reads the gradients.

use anyhow::Result;
use kernels::cuda::{with_gemm_sm_target, CudaDevice, LaneMark, Lanes};
use kernels::ops::{
    linear_backward_weight, rmsnorm_backward_acc, rmsnorm_backward_acc_from, GradStore,
};
use kernels::{Device, Tensor};

/// How the decoder backward queues weight gradients (`REALIGN_TRAIN_OVERLAP`, read once): unset or
/// `0` on the device's stream; `1` on a side lane whose GEMMs plan for the whole GPU; `sms=N` on a
/// side lane whose GEMMs plan for N SMs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overlap {
    Off,
    Lane { sms: Option<u32> },
}

impl std::fmt::Display for Overlap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Overlap::Off => write!(f, "in place"),
            Overlap::Lane { sms: None } => write!(f, "side lane"),
            Overlap::Lane { sms: Some(n) } => write!(f, "side lane, {n} SMs"),
        }
    }
}

pub fn overlap_requested() -> Overlap {
    static MODE: std::sync::OnceLock<Overlap> = std::sync::OnceLock::new();
    *MODE.get_or_init(|| {
        let v = std::env::var("REALIGN_TRAIN_OVERLAP").unwrap_or_default();
        parse_overlap(&v).unwrap_or_else(|| {
            if !v.is_empty() {
                tracing::warn!("REALIGN_TRAIN_OVERLAP={v} not understood (0, 1 or sms=N): off");
            }
            Overlap::Off
        })
    })
}

fn parse_overlap(v: &str) -> Option<Overlap> {
    match v.trim() {
        "" | "0" => Some(Overlap::Off),
        "1" => Some(Overlap::Lane { sms: None }),
        other => {
            let n: u32 = other.strip_prefix("sms=")?.parse().ok()?;
            (n > 0).then_some(Overlap::Lane { sms: Some(n) })
        }
    }
}

/// Where the weight gradients of one backward are queued: a side lane of the GPU, or in place.
pub(crate) struct GradLane<'d> {
    /// The open fork (None: in place). Declared first so that a drop on an error path joins the
    /// lane before the kept inputs below are freed.
    fork: Option<Lanes<'d>>,
    sms: Option<u32>,
    /// Inputs of the work queued since the last [`GradLane::end_layer`].
    current: Vec<Tensor>,
    /// The previous layer's inputs and the mark of its work.
    previous: Option<(LaneMark, Vec<Tensor>)>,
}

impl<'d> GradLane<'d> {
    /// A side lane on `cuda` (a GPU's backward with the overlap asked for), else in place.
    pub fn open(cuda: Option<&'d CudaDevice>, mode: Overlap) -> Result<GradLane<'d>> {
        let (fork, sms) = match (cuda, mode) {
            (Some(cuda), Overlap::Lane { sms }) => (Some(cuda.fork_lanes(1)?), sms),
            _ => (None, None),
        };
        Ok(GradLane {
            fork,
            sms,
            current: Vec::new(),
            previous: None,
        })
    }

    /// dw (+)= dyᵀ · x as `store` says and db += Σ_n dy[n], queued on the lane or run in place.
    /// On a lane, dy and x must stay unchanged and alive until the device's stream has waited for
    /// this work: hand them to [`GradLane::keep`] instead of dropping them, and add onto a
    /// residual gradient that a weight gradient reads through [`GradLane::add_norm_grad`].
    pub fn weight_grad(
        &mut self,
        dy: &Tensor,
        x: &Tensor,
        dw: &mut Tensor,
        db: Option<&mut Tensor>,
        store: GradStore,
    ) -> Result<()> {
        let Some(fork) = &self.fork else {
            linear_backward_weight(dy, x, dw, db, store)?;
            return Ok(());
        };
        fork.catch_up(0)?;
        let sms = self.sms;
        fork.on(0, || -> kernels::Result<()> {
            match sms {
                Some(n) => with_gemm_sm_target(n, || linear_backward_weight(dy, x, dw, db, store)),
                None => linear_backward_weight(dy, x, dw, db, store),
            }
        })??;
        Ok(())
    }

    /// The residual gradient `res` plus a norm's input gradient (`rmsnorm_backward_acc`, whose
    /// weight gradient is added to `dw`): in place when the weight gradients run in place; on a
    /// lane into a new tensor (`rmsnorm_backward_acc_from`, the same bits), since a queued weight
    /// gradient may still be reading `res`, which is kept until then.
    #[allow(clippy::too_many_arguments)]
    pub fn add_norm_grad(
        &mut self,
        res: Tensor,
        dy: &Tensor,
        x: &Tensor,
        w: &Tensor,
        rstd: &Tensor,
        dw: &mut Tensor,
    ) -> Result<Tensor> {
        if self.fork.is_none() {
            let mut res = res;
            rmsnorm_backward_acc(dy, x, w, rstd, &mut res, dw)?;
            return Ok(res);
        }
        let out = rmsnorm_backward_acc_from(dy, x, w, rstd, &res, dw)?;
        self.current.push(res);
        Ok(out)
    }

    /// Keeps `t` until the work queued so far is waited for (in place: dropped at once).
    pub fn keep(&mut self, t: Tensor) {
        if self.fork.is_some() {
            self.current.push(t);
        }
    }

    /// Marks the end of a layer's weight gradients; the device's stream waits for the layer before
    /// (one layer of slack) and its inputs are freed after that wait.
    pub fn end_layer(&mut self) -> Result<()> {
        let Some(fork) = &self.fork else {
            return Ok(());
        };
        let mark = fork.mark(0)?;
        let done = std::mem::take(&mut self.current);
        if let Some((prev, inputs)) = self.previous.replace((mark, done)) {
            fork.wait_for(&prev)?;
            drop(inputs);
        }
        Ok(())
    }

    /// Joins the lane: the device's stream waits for every weight gradient, then the inputs are
    /// freed. Call before anything reads the gradients.
    pub fn finish(mut self) -> Result<()> {
        if let Some(fork) = self.fork.take() {
            fork.join()?;
        }
        self.previous = None;
        self.current.clear();
        Ok(())
    }
}

/// The CUDA device of `device`, if it is one.
pub(crate) fn cuda_of(device: &Device) -> Option<&CudaDevice> {
    match device {
        Device::Cuda(c) => Some(c),
        Device::Cpu => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_overlap_setting_parses() {
        assert_eq!(parse_overlap(""), Some(Overlap::Off));
        assert_eq!(parse_overlap("0"), Some(Overlap::Off));
        assert_eq!(parse_overlap("1"), Some(Overlap::Lane { sms: None }));
        assert_eq!(
            parse_overlap("sms=88"),
            Some(Overlap::Lane { sms: Some(88) })
        );
        assert_eq!(parse_overlap("sms=0"), None);
        assert_eq!(parse_overlap("yes"), None);
    }
}
