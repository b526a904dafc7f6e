//! AdamW over a model's [`Params`], with f32 master weights and moments per parameter name.
//!
//! The working weights (what forward/backward read) may be bf16 on the GPU or f32 on the CPU;
//! the optimiser owns an f32 master copy and the two moments of every parameter, addressable by
//! HF name so that a ZeRO layout can later keep only its shard of each. One step:
//!   1. global grad norm ‖g‖ = sqrt(Σ_params sum_squares(g)) (kernels, accumulated in f64);
//!   2. if ‖g‖ is not finite: skip the update (report it) — a NaN must not reach the weights;
//!   3. clip: if ‖g‖ > max_norm, g ← g · max_norm / (‖g‖ + 1e-6) (PyTorch's `clip_grad_norm_`
//!      rule), applied inside the update: the gradient buffers are read, not rewritten;
//!   4. the AdamW update of every parameter (PyTorch AdamW semantics), weight decay only where
//!      the mask says; the kernel writes the bf16 working copy, or the f32 master is copied to an
//!      f32 working tensor. Steps 3 and 4 are one `adamw_step_many` (one launch on the GPU).
//!
//! On one GPU steps 1-4 are queued without waiting: the norm and the clip / skip decision stay in
//! device memory (`ops::grad_clip`) and the update kernel reads them there; the norm comes back to
//! the host (for the metric and the step counter) after the update is queued.
//!
//! Weight-decay mask: no decay on rank-1 tensors, which in these models are exactly the RMSNorm
//! weights and the q/k/v biases.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use kernels::ops::{
    adamw_step_many, adamw_step_many_clipped, grad_clip, sum_squares_each, AdamWItem, AdamWParams,
    ClipDecision, GradClip,
};
use kernels::{DType, Tensor};
use model::Params;
use serde::{Deserialize, Serialize};

/// Hyper-parameters (config names in docs/algorithms.md).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Global grad-norm clip; `None` turns clipping off.
    pub max_grad_norm: Option<f64>,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            max_grad_norm: Some(1.0),
        }
    }
}

/// Optimiser state of one parameter: f32 master weights and moments, same shape and device as
/// the parameter (or its shard).
#[derive(Debug)]
pub struct ParamState {
    pub master: Tensor,
    pub exp_avg: Tensor,
    pub exp_avg_sq: Tensor,
    /// Whether weight decay applies.
    pub decay: bool,
}

/// What one step did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    /// ‖g‖ before clipping (`actor/grad_norm`).
    pub grad_norm: f64,
    /// The factor the gradients were scaled by (1 when not clipped).
    pub clip_coef: f64,
    pub lr: f64,
    /// True when the norm was not finite and the weights were left alone.
    pub skipped: bool,
}

/// Σ over `tensors` of Σ g², added on the host in the given order. The per-tensor sums come back
/// from the device together (`sum_squares_each`: one synchronisation, not one per tensor).
fn sum_of_sum_squares(tensors: Vec<(String, &Tensor)>) -> Result<f64> {
    let refs: Vec<&Tensor> = tensors.iter().map(|(_, g)| *g).collect();
    let sums = sum_squares_each(&refs).with_context(|| {
        let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
        format!("gradient norm of {}", names.join(", "))
    })?;
    Ok(sums.iter().sum())
}

/// A step [`AdamW::queue_step`] queued and [`AdamW::finish_step`] completes.
#[must_use = "finish the step with AdamW::finish_step"]
pub struct PendingStep {
    clip: GradClip,
    lr: f64,
}

/// How an update scales the gradients: a factor known on the host (ZeRO), or the decision
/// `ops::grad_clip` left on the device.
enum Scale<'a> {
    Host(f32),
    Clip(&'a GradClip),
}

/// The default weight-decay mask: decay matrices, not norms and biases (rank-1 tensors).
pub fn decays(_name: &str, shape: &[usize]) -> bool {
    shape.len() >= 2
}

#[derive(Debug)]
pub struct AdamW {
    pub cfg: AdamWConfig,
    /// Optimiser steps taken (the next step is `step + 1` in PyTorch's counting).
    pub step: u64,
    states: BTreeMap<String, ParamState>,
}

impl AdamW {
    /// Fresh state for `params`: master = the weights in f32, zero moments, on their device.
    pub fn new(params: &Params, cfg: AdamWConfig) -> Result<AdamW> {
        AdamW::new_owned(params, cfg, |_| true)
    }

    /// Fresh state for the parameters `owns` selects only (ZeRO-1: each data-parallel rank keeps
    /// the optimiser state of its share, see [`super::zero`]). Steps update only those parameters.
    pub fn new_owned(
        params: &Params,
        cfg: AdamWConfig,
        owns: impl Fn(&str) -> bool,
    ) -> Result<AdamW> {
        let mut states = BTreeMap::new();
        for (name, p) in params.tensors() {
            if !owns(&name) {
                continue;
            }
            let master = to_f32(p).with_context(|| format!("optimiser master copy of {name}"))?;
            let exp_avg = Tensor::zeros(p.shape(), DType::F32, p.device())?;
            let exp_avg_sq = Tensor::zeros(p.shape(), DType::F32, p.device())?;
            let decay = decays(&name, p.shape());
            states.insert(
                name,
                ParamState {
                    master,
                    exp_avg,
                    exp_avg_sq,
                    decay,
                },
            );
        }
        Ok(AdamW {
            cfg,
            step: 0,
            states,
        })
    }

    /// The state of one parameter by HF name.
    pub fn state(&self, name: &str) -> Option<&ParamState> {
        self.states.get(name)
    }

    pub fn state_mut(&mut self, name: &str) -> Option<&mut ParamState> {
        self.states.get_mut(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.states.keys()
    }

    /// Global L2 norm of the gradients.
    pub fn grad_norm(grads: &Params) -> Result<f64> {
        Ok(sum_of_sum_squares(grads.tensors())?.sqrt())
    }

    /// Σ g² over the parameters this optimiser owns (a rank's share of the global norm²).
    pub fn owned_sum_squares(&self, grads: &Params) -> Result<f64> {
        let owned = grads
            .tensors()
            .into_iter()
            .filter(|(name, _)| self.states.contains_key(name))
            .collect();
        sum_of_sum_squares(owned)
    }

    /// One update of `params` (working weights) from `grads` (f32, same structure) at `lr`.
    /// `grads` is only read (the clip factor is applied inside the update). [`AdamW::queue_step`]
    /// then [`AdamW::finish_step`].
    pub fn step(&mut self, params: &mut Params, grads: &mut Params, lr: f64) -> Result<StepStats> {
        let pending = self.queue_step(params, grads, lr)?;
        self.finish_step(params, pending)
    }

    /// Queues a step without waiting for the device: on one GPU the norm, the clip factor and the
    /// skip decision stay in device memory (`ops::grad_clip`) and the update kernel reads them
    /// there. The step counter advances now (the update's bias corrections use it); hand the
    /// result to [`AdamW::finish_step`] before the next step, which reads the norm back and takes
    /// the count back if the device skipped the update, so that a skipped step leaves the
    /// optimiser as it was.
    pub fn queue_step(
        &mut self,
        params: &mut Params,
        grads: &mut Params,
        lr: f64,
    ) -> Result<PendingStep> {
        let clip = {
            let named = grads.tensors();
            let refs: Vec<&Tensor> = named.iter().map(|(_, g)| *g).collect();
            grad_clip(&refs, self.cfg.max_grad_norm).with_context(|| {
                let names: Vec<&str> = named.iter().map(|(n, _)| n.as_str()).collect();
                format!("gradient norm of {}", names.join(", "))
            })?
        };
        self.step += 1;
        if let Err(e) = self.update(params, grads, lr, Scale::Clip(&clip)) {
            self.step -= 1;
            return Err(e);
        }
        Ok(PendingStep { clip, lr })
    }

    /// Completes a queued step: reads the norm back (waits for the device), settles the step
    /// counter, and copies f32 working weights from the masters.
    pub fn finish_step(&mut self, params: &mut Params, pending: PendingStep) -> Result<StepStats> {
        let lr = pending.lr;
        let d = pending
            .clip
            .read()
            .context("reading the gradient norm back")?;
        if d.skipped {
            self.step -= 1;
            tracing::warn!(
                grad_norm = d.norm,
                "non-finite gradient norm: update skipped"
            );
            return Ok(StepStats {
                grad_norm: d.norm,
                clip_coef: 0.0,
                lr,
                skipped: true,
            });
        }
        self.copy_f32_working(params)?;
        Ok(StepStats {
            grad_norm: d.norm,
            clip_coef: d.scale,
            lr,
            skipped: false,
        })
    }

    /// [`AdamW::step`] with the global gradient norm given (ZeRO: the square root of the
    /// all-reduced [`AdamW::owned_sum_squares`]); updates the owned parameters only.
    pub fn step_with_norm(
        &mut self,
        params: &mut Params,
        grads: &mut Params,
        lr: f64,
        norm: f64,
    ) -> Result<StepStats> {
        let d = ClipDecision::from_norm(norm, self.cfg.max_grad_norm);
        if d.skipped {
            tracing::warn!(grad_norm = norm, "non-finite gradient norm: update skipped");
            return Ok(StepStats {
                grad_norm: norm,
                clip_coef: 0.0,
                lr,
                skipped: true,
            });
        }
        self.step += 1;
        if let Err(e) = self.update(params, grads, lr, Scale::Host(d.scale as f32)) {
            self.step -= 1;
            return Err(e);
        }
        self.copy_f32_working(params)?;
        Ok(StepStats {
            grad_norm: norm,
            clip_coef: d.scale,
            lr,
            skipped: false,
        })
    }

    /// Queues the AdamW update (step number `self.step`) of every owned parameter, the gradients
    /// scaled as `scale` says: one `adamw_step_many` (one launch on the GPU). bf16 working weights
    /// are written by the update; f32 ones by [`AdamW::copy_f32_working`] afterwards.
    fn update(
        &mut self,
        params: &mut Params,
        grads: &mut Params,
        lr: f64,
        scale: Scale,
    ) -> Result<()> {
        let mut grads_by_name: BTreeMap<String, &mut Tensor> =
            grads.tensors_mut().into_iter().collect();
        if let Some(name) = self
            .states
            .keys()
            .find(|n| !grads_by_name.contains_key(n.as_str()))
        {
            bail!("the optimiser holds state for {name}, which the model does not have");
        }
        let mut params_by_name: BTreeMap<String, &mut Tensor> =
            params.tensors_mut().into_iter().collect();
        let mut items = Vec::with_capacity(self.states.len());
        for (name, st) in self.states.iter_mut() {
            let Some(w) = params_by_name.remove(name) else {
                continue; // as before: state without a parameter of that name is left alone
            };
            let grad = grads_by_name
                .remove(name)
                .with_context(|| format!("no gradient for parameter {name}"))?;
            let working = match w.dtype() {
                DType::BF16 => Some(w),
                DType::F32 => None,
                DType::U32 => bail!("parameter {name} has dtype u32"),
            };
            items.push(AdamWItem {
                master: &mut st.master,
                grad,
                m: &mut st.exp_avg,
                v: &mut st.exp_avg_sq,
                working,
                weight_decay: if st.decay { self.cfg.weight_decay } else { 0.0 },
            });
        }
        let hp = AdamWParams {
            lr,
            beta1: self.cfg.beta1,
            beta2: self.cfg.beta2,
            eps: self.cfg.eps,
            weight_decay: self.cfg.weight_decay,
            step: self.step,
        };
        let n = items.len();
        match scale {
            Scale::Host(f) => adamw_step_many(&mut items, &hp, f),
            Scale::Clip(c) => adamw_step_many_clipped(&mut items, &hp, c),
        }
        .with_context(|| format!("AdamW step over {n} parameters"))
    }

    /// f32 working weights are the master weights themselves: copy them over after an update.
    fn copy_f32_working(&self, params: &mut Params) -> Result<()> {
        for (name, w) in params.tensors_mut() {
            if w.dtype() != DType::F32 {
                continue;
            }
            if let Some(st) = self.states.get(&name) {
                *w = st
                    .master
                    .try_clone()
                    .with_context(|| format!("AdamW step of {name}"))?;
            }
        }
        Ok(())
    }

    /// Writes the state (master, moments per parameter, step, config) to one safetensors file:
    /// tensors `{name}.master`, `{name}.exp_avg`, `{name}.exp_avg_sq`, metadata `step`, `config`.
    pub fn save(&self, path: &std::path::Path) -> Result<()> {
        let mut bufs: Vec<(String, Vec<usize>, Vec<u8>)> = vec![];
        for (name, st) in &self.states {
            for (suffix, t) in [
                ("master", &st.master),
                ("exp_avg", &st.exp_avg),
                ("exp_avg_sq", &st.exp_avg_sq),
            ] {
                let data = t.to_vec_f32()?;
                let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
                bufs.push((format!("{name}.{suffix}"), t.shape().to_vec(), bytes));
            }
        }
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bufs
            .iter()
            .map(|(n, s, b)| {
                Ok((
                    n.clone(),
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)?,
                ))
            })
            .collect::<Result<_>>()?;
        let mut meta = std::collections::HashMap::new();
        meta.insert("step".to_string(), self.step.to_string());
        meta.insert("config".to_string(), serde_json::to_string(&self.cfg)?);
        let tmp = path.with_extension("safetensors.tmp");
        safetensors::serialize_to_file(views, Some(meta), &tmp)
            .with_context(|| format!("writing optimiser state to {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("moving optimiser state into {}", path.display()))?;
        Ok(())
    }

    /// Reads a state written by [`AdamW::save`] for `params` (names and shapes must match), placing
    /// it on `params`' devices.
    pub fn load(path: &std::path::Path, params: &Params) -> Result<AdamW> {
        AdamW::load_owned(path, params, |_| true)
    }

    /// [`AdamW::load`] for the parameters `owns` selects (a ZeRO rank's share).
    pub fn load_owned(
        path: &std::path::Path,
        params: &Params,
        owns: impl Fn(&str) -> bool,
    ) -> Result<AdamW> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("reading optimiser state {}", path.display()))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .with_context(|| format!("{} is not a safetensors file", path.display()))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)?;
        let meta = header.metadata().clone().unwrap_or_default();
        let step: u64 = meta
            .get("step")
            .context("optimiser state has no `step` metadata")?
            .parse()
            .context("optimiser state: `step` is not an integer")?;
        let cfg: AdamWConfig = serde_json::from_str(
            meta.get("config")
                .context("optimiser state has no `config` metadata")?,
        )
        .context("optimiser state: bad `config` metadata")?;
        let mut states = BTreeMap::new();
        for (name, p) in params.tensors() {
            if !owns(&name) {
                continue;
            }
            let get = |suffix: &str| -> Result<Tensor> {
                let key = format!("{name}.{suffix}");
                let v = st
                    .tensor(&key)
                    .with_context(|| format!("optimiser state {} lacks {key}", path.display()))?;
                if v.shape() != p.shape() || v.dtype() != safetensors::Dtype::F32 {
                    bail!(
                        "optimiser state {key} is {:?} {:?}, expected F32 {:?}",
                        v.dtype(),
                        v.shape(),
                        p.shape()
                    );
                }
                let data: Vec<f32> = v
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                Ok(Tensor::from_f32(data, p.shape(), p.device())?)
            };
            let state = ParamState {
                master: get("master")?,
                exp_avg: get("exp_avg")?,
                exp_avg_sq: get("exp_avg_sq")?,
                decay: decays(&name, p.shape()),
            };
            states.insert(name, state);
        }
        Ok(AdamW { cfg, step, states })
    }
}

/// An f32 copy of a float tensor on its own device.
fn to_f32(t: &Tensor) -> Result<Tensor> {
    Ok(match t.dtype() {
        DType::F32 => t.try_clone()?,
        DType::BF16 => kernels::ops::cast(t, DType::F32)?,
        DType::U32 => bail!("a parameter has dtype u32"),
    })
}
