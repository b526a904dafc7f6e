//! The model's parameters as tensors, in Hugging Face layout and naming.
//!
//! Every weight keeps HF's shape (`[out, in]` for linear layers), so loading and saving is a
//! name-for-name copy and a tensor-parallel or ZeRO shard is a row or column slice of the HF
//! tensor, described by a [`ShardSpec`] (design.md: resharding is a planned copy of described
//! slices). With tp = 1 every parameter is [`ShardSpec::Replicated`].
//!
//! The same structure holds gradients ([`Params::zeros_like`]) and optimiser moments, so an
//! optimiser walks `params.tensors_mut()` and `grads.tensors()` side by side: both list the same
//! names in the same (HF) order.

use anyhow::{bail, Context, Result};
use half::bf16;
use kernels::{DType, Device, Storage, Tensor};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::collections::BTreeMap;

use crate::config::{Head, ModelConfig};

/// Which part of the full HF tensor a rank holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ShardSpec {
    /// The whole tensor.
    #[default]
    Replicated,
    /// Rows `start..start+len` of dim 0 (column-parallel linear: q/k/v/gate/up; vocab-parallel
    /// embedding).
    Rows { start: usize, len: usize },
    /// Columns `start..start+len` of the last dim (row-parallel linear: o/down).
    Cols { start: usize, len: usize },
}

impl ShardSpec {
    /// The shape this rank holds of a tensor whose full shape is `full`.
    pub fn local_shape(&self, full: &[usize]) -> Result<Vec<usize>> {
        let mut s = full.to_vec();
        match *self {
            ShardSpec::Replicated => {}
            ShardSpec::Rows { start, len } => {
                if s.is_empty() || start + len > s[0] {
                    bail!(
                        "row shard {start}..{} is outside shape {full:?}",
                        start + len
                    );
                }
                s[0] = len;
            }
            ShardSpec::Cols { start, len } => {
                let last = s.len().checked_sub(1).context("cannot shard a scalar")?;
                if start + len > s[last] {
                    bail!(
                        "column shard {start}..{} is outside shape {full:?}",
                        start + len
                    );
                }
                s[last] = len;
            }
        }
        Ok(s)
    }
}

/// One parameter's name (HF), full shape and initialisation, derived from the config.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
}

/// How [`Params::init`] fills a parameter (HF `_init_weights` for these models).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Normal(0, initializer_range): embeddings, linear weights, score head.
    Normal,
    /// All ones: RMSNorm weights.
    Ones,
    /// All zeros: biases.
    Zeros,
}

/// The parameters of one decoder layer. Shapes: C hidden, H query heads, K kv heads, D head dim,
/// F MLP width.
#[derive(Debug)]
pub struct LayerParams {
    /// `input_layernorm.weight [C]`
    pub attn_norm: Tensor,
    /// `self_attn.q_proj.weight [H*D, C]`
    pub q: Tensor,
    /// `self_attn.k_proj.weight [K*D, C]`
    pub k: Tensor,
    /// `self_attn.v_proj.weight [K*D, C]`
    pub v: Tensor,
    /// `self_attn.q_proj.bias [H*D]` (Qwen2)
    pub q_bias: Option<Tensor>,
    /// `self_attn.k_proj.bias [K*D]` (Qwen2)
    pub k_bias: Option<Tensor>,
    /// `self_attn.v_proj.bias [K*D]` (Qwen2)
    pub v_bias: Option<Tensor>,
    /// `self_attn.o_proj.weight [C, H*D]`
    pub o: Tensor,
    /// `post_attention_layernorm.weight [C]`
    pub mlp_norm: Tensor,
    /// `mlp.gate_proj.weight [F, C]`
    pub gate: Tensor,
    /// `mlp.up_proj.weight [F, C]`
    pub up: Tensor,
    /// `mlp.down_proj.weight [C, F]`
    pub down: Tensor,
}

/// All parameters of a model, in HF layout.
#[derive(Debug)]
pub struct Params {
    /// `model.embed_tokens.weight [V, C]`
    pub embed: Tensor,
    pub layers: Vec<LayerParams>,
    /// `model.norm.weight [C]`
    pub final_norm: Tensor,
    /// `lm_head.weight [V, C]`; `None` when the embeddings are tied (use `embed`) or the model has
    /// a score head instead.
    pub lm_head: Option<Tensor>,
    /// `score.weight [num_labels, C]` for `*ForSequenceClassification` (critics, reward models).
    pub score: Option<Tensor>,
    /// Which slice of each full HF tensor this rank holds, by HF name; absent = Replicated.
    pub shards: BTreeMap<String, ShardSpec>,
}

/// The HF name of each layer parameter, as a suffix after `model.layers.{i}.`.
const LAYER_NAMES: [&str; 12] = [
    "self_attn.q_proj.weight",
    "self_attn.q_proj.bias",
    "self_attn.k_proj.weight",
    "self_attn.k_proj.bias",
    "self_attn.v_proj.weight",
    "self_attn.v_proj.bias",
    "self_attn.o_proj.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
    "input_layernorm.weight",
    "post_attention_layernorm.weight",
];

/// Every parameter the config implies, with its HF name and full shape, in HF order (the order
/// of `model.named_parameters()`).
pub fn param_specs(cfg: &ModelConfig) -> Vec<ParamSpec> {
    let (c, f, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let (hd, kd) = (
        cfg.num_attention_heads * cfg.head_dim,
        cfg.num_key_value_heads * cfg.head_dim,
    );
    let spec = |name: String, shape: Vec<usize>, init| ParamSpec { name, shape, init };
    let mut out = vec![spec(
        "model.embed_tokens.weight".into(),
        vec![v, c],
        Init::Normal,
    )];
    for i in 0..cfg.num_hidden_layers {
        for suffix in LAYER_NAMES {
            let (shape, init) = match suffix {
                "input_layernorm.weight" | "post_attention_layernorm.weight" => {
                    (vec![c], Init::Ones)
                }
                "self_attn.q_proj.weight" => (vec![hd, c], Init::Normal),
                "self_attn.k_proj.weight" | "self_attn.v_proj.weight" => {
                    (vec![kd, c], Init::Normal)
                }
                "self_attn.q_proj.bias" if cfg.qkv_bias => (vec![hd], Init::Zeros),
                "self_attn.k_proj.bias" | "self_attn.v_proj.bias" if cfg.qkv_bias => {
                    (vec![kd], Init::Zeros)
                }
                "self_attn.o_proj.weight" => (vec![c, hd], Init::Normal),
                "mlp.gate_proj.weight" | "mlp.up_proj.weight" => (vec![f, c], Init::Normal),
                "mlp.down_proj.weight" => (vec![c, f], Init::Normal),
                _ => continue, // a bias the config does not have
            };
            out.push(spec(format!("model.layers.{i}.{suffix}"), shape, init));
        }
    }
    out.push(spec("model.norm.weight".into(), vec![c], Init::Ones));
    match cfg.head {
        Head::CausalLm if !cfg.tie_word_embeddings => {
            out.push(spec("lm_head.weight".into(), vec![v, c], Init::Normal))
        }
        Head::CausalLm => {}
        Head::SequenceClassification => out.push(spec(
            "score.weight".into(),
            vec![cfg.num_labels, c],
            Init::Normal,
        )),
    }
    out
}

impl Params {
    /// Builds the structure from a function that makes each tensor from its spec, in HF order.
    pub fn build(
        cfg: &ModelConfig,
        mut make: impl FnMut(&ParamSpec) -> Result<Tensor>,
    ) -> Result<Params> {
        let mut map: BTreeMap<String, Tensor> = BTreeMap::new();
        for s in param_specs(cfg) {
            let t = make(&s).with_context(|| format!("parameter {}", s.name))?;
            if t.shape() != s.shape.as_slice() {
                bail!(
                    "parameter {} has shape {:?}, expected {:?}",
                    s.name,
                    t.shape(),
                    s.shape
                );
            }
            map.insert(s.name, t);
        }
        let mut take = |name: &str| map.remove(name);
        let req = |t: Option<Tensor>, name: &str| {
            t.with_context(|| format!("parameter {name} is missing"))
        };
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = |s: &str| format!("model.layers.{i}.{s}");
            let mut get = |s: &str| take(&p(s));
            let layer = LayerParams {
                attn_norm: req(get("input_layernorm.weight"), &p("input_layernorm.weight"))?,
                q: req(
                    get("self_attn.q_proj.weight"),
                    &p("self_attn.q_proj.weight"),
                )?,
                k: req(
                    get("self_attn.k_proj.weight"),
                    &p("self_attn.k_proj.weight"),
                )?,
                v: req(
                    get("self_attn.v_proj.weight"),
                    &p("self_attn.v_proj.weight"),
                )?,
                q_bias: get("self_attn.q_proj.bias"),
                k_bias: get("self_attn.k_proj.bias"),
                v_bias: get("self_attn.v_proj.bias"),
                o: req(
                    get("self_attn.o_proj.weight"),
                    &p("self_attn.o_proj.weight"),
                )?,
                mlp_norm: req(
                    get("post_attention_layernorm.weight"),
                    &p("post_attention_layernorm.weight"),
                )?,
                gate: req(get("mlp.gate_proj.weight"), &p("mlp.gate_proj.weight"))?,
                up: req(get("mlp.up_proj.weight"), &p("mlp.up_proj.weight"))?,
                down: req(get("mlp.down_proj.weight"), &p("mlp.down_proj.weight"))?,
            };
            layers.push(layer);
        }
        Ok(Params {
            embed: req(
                take("model.embed_tokens.weight"),
                "model.embed_tokens.weight",
            )?,
            layers,
            final_norm: req(take("model.norm.weight"), "model.norm.weight")?,
            lm_head: take("lm_head.weight"),
            score: take("score.weight"),
            shards: BTreeMap::new(),
        })
    }

    /// Random initialisation like HF `_init_weights`: Normal(0, initializer_range) for embeddings,
    /// linear weights and the score head; ones for norms; zeros for biases. Deterministic in `seed`
    /// (each tensor draws from its own stream, so adding a head does not change the body).
    pub fn init(cfg: &ModelConfig, seed: u64, device: &Device, dtype: DType) -> Result<Params> {
        let std = cfg.initializer_range as f32;
        let mut index = 0u64;
        Params::build(cfg, |s| {
            index += 1;
            let n: usize = s.shape.iter().product();
            let data = match s.init {
                Init::Ones => vec![1.0f32; n],
                Init::Zeros => vec![0.0f32; n],
                Init::Normal => {
                    let mut rng =
                        StdRng::seed_from_u64(seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                    normal_vec(&mut rng, n, std)
                }
            };
            host_tensor(data, &s.shape, dtype)?
                .to_device(device)
                .map_err(Into::into)
        })
    }

    /// Zero tensors with the same structure and shapes (gradient buffers, optimiser moments), on
    /// the same device as `self`.
    pub fn zeros_like(&self, dtype: DType) -> Result<Params> {
        self.map(|_, t| Ok(Tensor::zeros(t.shape(), dtype, t.device())?))
    }

    /// A copy on `device` (same dtypes).
    pub fn to_device(&self, device: &Device) -> Result<Params> {
        self.map(|_, t| Ok(t.to_device(device)?))
    }

    /// A copy with every tensor converted to `dtype` (f32 <-> bf16, round to nearest even), on the
    /// same device.
    pub fn cast(&self, dtype: DType) -> Result<Params> {
        self.map(|_, t| cast_tensor(t, dtype))
    }

    /// Applies `f` to every tensor, keeping names, structure and shard specs.
    pub fn map(&self, mut f: impl FnMut(&str, &Tensor) -> Result<Tensor>) -> Result<Params> {
        let mut g =
            |name: &str, t: &Tensor| f(name, t).with_context(|| format!("parameter {name}"));
        let opt = |g: &mut dyn FnMut(&str, &Tensor) -> Result<Tensor>,
                   name: &str,
                   t: &Option<Tensor>| t.as_ref().map(|t| g(name, t)).transpose();
        let mut layers = Vec::with_capacity(self.layers.len());
        for (i, l) in self.layers.iter().enumerate() {
            let p = |s: &str| format!("model.layers.{i}.{s}");
            layers.push(LayerParams {
                attn_norm: g(&p("input_layernorm.weight"), &l.attn_norm)?,
                q: g(&p("self_attn.q_proj.weight"), &l.q)?,
                k: g(&p("self_attn.k_proj.weight"), &l.k)?,
                v: g(&p("self_attn.v_proj.weight"), &l.v)?,
                q_bias: opt(&mut g, &p("self_attn.q_proj.bias"), &l.q_bias)?,
                k_bias: opt(&mut g, &p("self_attn.k_proj.bias"), &l.k_bias)?,
                v_bias: opt(&mut g, &p("self_attn.v_proj.bias"), &l.v_bias)?,
                o: g(&p("self_attn.o_proj.weight"), &l.o)?,
                mlp_norm: g(&p("post_attention_layernorm.weight"), &l.mlp_norm)?,
                gate: g(&p("mlp.gate_proj.weight"), &l.gate)?,
                up: g(&p("mlp.up_proj.weight"), &l.up)?,
                down: g(&p("mlp.down_proj.weight"), &l.down)?,
            });
        }
        Ok(Params {
            embed: g("model.embed_tokens.weight", &self.embed)?,
            layers,
            final_norm: g("model.norm.weight", &self.final_norm)?,
            lm_head: opt(&mut g, "lm_head.weight", &self.lm_head)?,
            score: opt(&mut g, "score.weight", &self.score)?,
            shards: self.shards.clone(),
        })
    }

    /// `(HF name, tensor)` for every parameter, in HF order (that of `model.named_parameters()`).
    pub fn tensors(&self) -> Vec<(String, &Tensor)> {
        let mut out: Vec<(String, &Tensor)> =
            vec![("model.embed_tokens.weight".into(), &self.embed)];
        for (i, l) in self.layers.iter().enumerate() {
            let p = |s: &str| format!("model.layers.{i}.{s}");
            out.push((p("self_attn.q_proj.weight"), &l.q));
            if let Some(b) = &l.q_bias {
                out.push((p("self_attn.q_proj.bias"), b));
            }
            out.push((p("self_attn.k_proj.weight"), &l.k));
            if let Some(b) = &l.k_bias {
                out.push((p("self_attn.k_proj.bias"), b));
            }
            out.push((p("self_attn.v_proj.weight"), &l.v));
            if let Some(b) = &l.v_bias {
                out.push((p("self_attn.v_proj.bias"), b));
            }
            out.push((p("self_attn.o_proj.weight"), &l.o));
            out.push((p("mlp.gate_proj.weight"), &l.gate));
            out.push((p("mlp.up_proj.weight"), &l.up));
            out.push((p("mlp.down_proj.weight"), &l.down));
            out.push((p("input_layernorm.weight"), &l.attn_norm));
            out.push((p("post_attention_layernorm.weight"), &l.mlp_norm));
        }
        out.push(("model.norm.weight".into(), &self.final_norm));
        if let Some(t) = &self.lm_head {
            out.push(("lm_head.weight".into(), t));
        }
        if let Some(t) = &self.score {
            out.push(("score.weight".into(), t));
        }
        out
    }

    /// `(HF name, tensor)` for every parameter, mutable, in the same order as [`Params::tensors`].
    pub fn tensors_mut(&mut self) -> Vec<(String, &mut Tensor)> {
        let mut out: Vec<(String, &mut Tensor)> =
            vec![("model.embed_tokens.weight".into(), &mut self.embed)];
        for (i, l) in self.layers.iter_mut().enumerate() {
            let p = |s: &str| format!("model.layers.{i}.{s}");
            out.push((p("self_attn.q_proj.weight"), &mut l.q));
            if let Some(b) = &mut l.q_bias {
                out.push((p("self_attn.q_proj.bias"), b));
            }
            out.push((p("self_attn.k_proj.weight"), &mut l.k));
            if let Some(b) = &mut l.k_bias {
                out.push((p("self_attn.k_proj.bias"), b));
            }
            out.push((p("self_attn.v_proj.weight"), &mut l.v));
            if let Some(b) = &mut l.v_bias {
                out.push((p("self_attn.v_proj.bias"), b));
            }
            out.push((p("self_attn.o_proj.weight"), &mut l.o));
            out.push((p("mlp.gate_proj.weight"), &mut l.gate));
            out.push((p("mlp.up_proj.weight"), &mut l.up));
            out.push((p("mlp.down_proj.weight"), &mut l.down));
            out.push((p("input_layernorm.weight"), &mut l.attn_norm));
            out.push((p("post_attention_layernorm.weight"), &mut l.mlp_norm));
        }
        out.push(("model.norm.weight".into(), &mut self.final_norm));
        if let Some(t) = &mut self.lm_head {
            out.push(("lm_head.weight".into(), t));
        }
        if let Some(t) = &mut self.score {
            out.push(("score.weight".into(), t));
        }
        out
    }

    /// The HF names, in order.
    pub fn names(&self) -> Vec<String> {
        self.tensors().into_iter().map(|(n, _)| n).collect()
    }

    /// The shard this rank holds of parameter `name`.
    pub fn shard_spec(&self, name: &str) -> ShardSpec {
        self.shards.get(name).copied().unwrap_or_default()
    }

    /// The output projection for logits: `lm_head`, or the embedding when tied.
    pub fn lm_head_weight(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Total number of elements.
    pub fn numel(&self) -> usize {
        self.tensors().iter().map(|(_, t)| t.numel()).sum()
    }

    /// Checks that names and shapes are exactly those `cfg` implies (replicated layout).
    pub fn check_against(&self, cfg: &ModelConfig) -> Result<()> {
        let specs = param_specs(cfg);
        let have = self.tensors();
        let want: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        let got: Vec<&str> = have.iter().map(|(n, _)| n.as_str()).collect();
        if want != got {
            let missing: Vec<_> = want.iter().filter(|n| !got.contains(n)).collect();
            let extra: Vec<_> = got.iter().filter(|n| !want.contains(n)).collect();
            bail!("parameters do not match the config: missing {missing:?}, unexpected {extra:?}");
        }
        for (s, (name, t)) in specs.iter().zip(have) {
            let local = self.shard_spec(&name).local_shape(&s.shape)?;
            if t.shape() != local.as_slice() {
                bail!(
                    "parameter {name} has shape {:?}, expected {local:?}",
                    t.shape()
                );
            }
        }
        Ok(())
    }
}

/// `n` draws of Normal(0, std) (Box–Muller, so that only `rand` is needed).
pub(crate) fn normal_vec(rng: &mut StdRng, n: usize, std: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        // u1 in (0, 1] so that ln(u1) is finite.
        let u1: f64 = 1.0 - rng.random::<f64>();
        let u2: f64 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        let a = std::f64::consts::TAU * u2;
        out.push((r * a.cos()) as f32 * std);
        out.push((r * a.sin()) as f32 * std);
    }
    out.truncate(n);
    out
}

/// A CPU tensor of `dtype` from f32 data (bf16 rounds to nearest even).
pub(crate) fn host_tensor(data: Vec<f32>, shape: &[usize], dtype: DType) -> Result<Tensor> {
    let storage = match dtype {
        DType::F32 => Storage::CpuF32(data),
        DType::BF16 => Storage::CpuBF16(data.into_iter().map(bf16::from_f32).collect()),
        DType::U32 => bail!("parameters must be f32 or bf16, not u32"),
    };
    Ok(Tensor::from_storage(storage, shape, Device::Cpu)?)
}

/// Converts a float tensor to `dtype` on its own device (f32 -> bf16 rounds to nearest even).
pub(crate) fn cast_tensor(t: &Tensor, dtype: DType) -> Result<Tensor> {
    if t.dtype() == dtype {
        return Ok(t.try_clone()?);
    }
    Ok(kernels::ops::cast(t, dtype)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Arch;

    fn tiny(arch: Arch) -> ModelConfig {
        let mut c = ModelConfig::new(arch, 16, 24, 2, 4, 2, 50);
        c.head_dim = 8; // C / H = 4, use a different D on purpose
        c
    }

    #[test]
    fn names_and_shapes_follow_hf() {
        let cfg = tiny(Arch::Qwen2);
        let p = Params::init(&cfg, 1, &Device::Cpu, DType::F32).unwrap();
        p.check_against(&cfg).unwrap();
        let names = p.names();
        assert_eq!(names[0], "model.embed_tokens.weight");
        assert_eq!(names[1], "model.layers.0.self_attn.q_proj.weight");
        assert_eq!(names[2], "model.layers.0.self_attn.q_proj.bias");
        assert_eq!(names[12], "model.layers.0.post_attention_layernorm.weight");
        assert_eq!(names.last().unwrap(), "lm_head.weight");
        assert_eq!(p.layers[0].q.shape(), &[32, 16]);
        assert_eq!(p.layers[0].k.shape(), &[16, 16]);
        assert_eq!(p.layers[0].o.shape(), &[16, 32]);
        assert_eq!(p.layers[1].down.shape(), &[16, 24]);
        assert_eq!(p.numel(), cfg.num_params());
    }

    #[test]
    fn tied_and_score_heads() {
        let mut cfg = tiny(Arch::Llama);
        cfg.tie_word_embeddings = true;
        let p = Params::init(&cfg, 1, &Device::Cpu, DType::F32).unwrap();
        assert!(p.lm_head.is_none() && p.layers[0].q_bias.is_none());
        assert_eq!(p.lm_head_weight().shape(), &[50, 16]);
        let rm = cfg.with_head(Head::SequenceClassification, 1);
        let p = Params::init(&rm, 1, &Device::Cpu, DType::F32).unwrap();
        assert_eq!(p.score.as_ref().unwrap().shape(), &[1, 16]);
        assert_eq!(p.names().last().unwrap(), "score.weight");
    }

    #[test]
    fn init_is_seeded_and_hf_like() {
        let cfg = tiny(Arch::Llama);
        let a = Params::init(&cfg, 7, &Device::Cpu, DType::F32).unwrap();
        let b = Params::init(&cfg, 7, &Device::Cpu, DType::F32).unwrap();
        let c = Params::init(&cfg, 8, &Device::Cpu, DType::F32).unwrap();
        assert_eq!(a.embed.to_vec_f32().unwrap(), b.embed.to_vec_f32().unwrap());
        assert_ne!(a.embed.to_vec_f32().unwrap(), c.embed.to_vec_f32().unwrap());
        assert!(a.final_norm.to_vec_f32().unwrap().iter().all(|&x| x == 1.0));
        let w = a.embed.to_vec_f32().unwrap();
        let std = (w.iter().map(|x| x * x).sum::<f32>() / w.len() as f32).sqrt();
        assert!((std - 0.02).abs() < 0.003, "std {std}");
    }

    #[test]
    fn zeros_like_cast_and_iteration_agree() {
        let cfg = tiny(Arch::Qwen2);
        let mut p = Params::init(&cfg, 3, &Device::Cpu, DType::F32).unwrap();
        let g = p.zeros_like(DType::F32).unwrap();
        assert_eq!(p.names(), g.names());
        assert!(g
            .tensors()
            .iter()
            .all(|(_, t)| t.to_vec_f32().unwrap().iter().all(|&x| x == 0.0)));
        let b = p.cast(DType::BF16).unwrap();
        assert!(b.tensors().iter().all(|(_, t)| t.dtype() == DType::BF16));
        let back = b.cast(DType::F32).unwrap();
        let (x, y) = (
            p.embed.to_vec_f32().unwrap(),
            back.embed.to_vec_f32().unwrap(),
        );
        assert!(x
            .iter()
            .zip(&y)
            .all(|(a, b)| (a - b).abs() <= a.abs() / 128.0));
        for (_, t) in p.tensors_mut() {
            t.cpu_f32_mut().unwrap()[0] = 5.0;
        }
        assert!(p
            .tensors()
            .iter()
            .all(|(_, t)| t.to_vec_f32().unwrap()[0] == 5.0));
    }

    #[test]
    fn shard_specs_describe_slices() {
        assert_eq!(
            ShardSpec::Rows { start: 4, len: 4 }
                .local_shape(&[8, 3])
                .unwrap(),
            vec![4, 3]
        );
        assert_eq!(
            ShardSpec::Cols { start: 0, len: 2 }
                .local_shape(&[8, 3])
                .unwrap(),
            vec![8, 2]
        );
        assert!(ShardSpec::Rows { start: 6, len: 4 }
            .local_shape(&[8, 3])
            .is_err());
        assert_eq!(ShardSpec::Replicated.local_shape(&[8]).unwrap(), vec![8]);
    }
}
