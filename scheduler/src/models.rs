//! Where a run's models come from and where they go: the initial policy (an HF folder, or a
//! fresh Llama with the char tokenizer), reward models and critics made from a policy, and
//! HF-layout exports (weights + config + tokenizer files) that `transformers` loads.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kernels::ops::cast;
use kernels::{DType, Device, Tensor};
use model::{Arch, Head, ModelConfig, Params};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr_free::normal;

use crate::config::Config;
use crate::synthetic::{arithmetic, char_tokenizer};

/// Tokenizer files copied next to every exported model.
pub const TOKENIZER_FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
];

/// A model's config and weights (policy, reference, critic or reward model).
pub struct Model {
    pub cfg: ModelConfig,
    pub params: Params,
}

impl Model {
    pub fn device(&self) -> Device {
        self.params.embed.device().clone()
    }

    /// A deep copy (the critic made from the reward model).
    pub fn duplicate(&self) -> Result<Model> {
        Ok(Model {
            cfg: self.cfg.clone(),
            params: self.params.map(|_, t| Ok(t.try_clone()?))?,
        })
    }

    /// Moves the weights to `device`, keeping their dtype (frozen models wait in host memory
    /// between their calls).
    pub fn move_to(&mut self, device: &Device) -> Result<()> {
        if !self.params.embed.device().same(device) {
            self.params = self.params.to_device(device)?;
        }
        Ok(())
    }
}

pub fn parse_dtype(s: &str) -> Result<DType> {
    Ok(match s {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        other => bail!("`run.dtype` is `{other}`; expected f32 or bf16"),
    })
}

/// The folder of the initial policy: `model.path`, or `run_dir/models/init` made (once) from
/// `model.init` with the char tokenizer of the synthetic task.
pub fn initial_model_dir(cfg: &Config, run_dir: &Path) -> Result<PathBuf> {
    if let Some(p) = &cfg.model.path {
        return Ok(p.clone());
    }
    let init = cfg
        .model
        .init
        .as_ref()
        .context("`model` needs `path` or `init`")?;
    let dir = run_dir.join("models").join("init");
    if dir.join("config.json").is_file() {
        return Ok(dir);
    }
    let staging = run_dir.join("models").join(".staging-init");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    std::fs::create_dir_all(&staging)?;
    let vocab = char_tokenizer::write(&staging, arithmetic::ALPHABET)?;
    let kv = init.num_key_value_heads.unwrap_or(init.num_attention_heads);
    let mut mc = ModelConfig::new(
        Arch::Llama,
        init.hidden_size,
        init.intermediate_size,
        init.num_hidden_layers,
        init.num_attention_heads,
        kv,
        vocab,
    );
    mc.max_position_embeddings = init.max_position_embeddings;
    mc.rope_theta = init.rope_theta;
    mc.tie_word_embeddings = init.tie_word_embeddings;
    mc.eos_token_ids = vec![0];
    mc.pad_token_id = Some(0);
    mc.validate()?;
    let params = Params::init(&mc, cfg.run.seed, &Device::Cpu, DType::F32)?;
    model::io::save_model(&staging, &mc, &params)?;
    crate::atomic::publish_dir(&staging, &dir)?;
    Ok(dir)
}

/// Loads an HF folder onto `device` in `dtype`.
pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Model> {
    let (cfg, params) = model::io::load_model(dir, device, dtype)
        .with_context(|| format!("cannot load the model in {}", dir.display()))?;
    Ok(Model { cfg, params })
}

/// A `*ForSequenceClassification` model (critic / reward model) with `src`'s body and a fresh
/// one-label score head; an LM head, if any, is dropped.
pub fn with_score_head(src: &Model, seed: u64) -> Result<Model> {
    let cfg = src.cfg.with_head(Head::SequenceClassification, 1);
    let dev = src.device();
    let dtype = src.params.embed.dtype();
    let by_name: std::collections::BTreeMap<String, &Tensor> =
        src.params.tensors().into_iter().collect();
    let std = cfg.initializer_range as f32;
    let params = Params::build(&cfg, |spec| {
        if spec.name == "score.weight" {
            let n: usize = spec.shape.iter().product();
            let mut rng = StdRng::seed_from_u64(seed);
            let w = Tensor::from_f32(normal(&mut rng, n, std), &spec.shape, &dev)?;
            Ok(if dtype == DType::F32 {
                w
            } else {
                cast(&w, dtype)?
            })
        } else {
            Ok(by_name
                .get(&spec.name)
                .with_context(|| format!("the source model has no {}", spec.name))?
                .try_clone()?)
        }
    })?;
    Ok(Model { cfg, params })
}

/// Writes `m` as an HF folder at `dir` (atomically: staging folder, then rename), with the
/// tokenizer files of `tokenizer_dir`.
pub fn export(m: &Model, dir: &Path, tokenizer_dir: &Path) -> Result<()> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let staging = parent.join(format!(".staging-{name}-{}", std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    write_into(m, &staging, tokenizer_dir)?;
    crate::atomic::publish_dir(&staging, dir)
}

/// Writes `m` and the tokenizer files into `dir` (no atomicity: for use inside a staging folder).
pub fn write_into(m: &Model, dir: &Path, tokenizer_dir: &Path) -> Result<()> {
    model::io::save_model(dir, &m.cfg, &m.params)?;
    for f in TOKENIZER_FILES {
        let src = tokenizer_dir.join(f);
        if src.is_file() {
            std::fs::copy(&src, dir.join(f))
                .with_context(|| format!("cannot copy {}", src.display()))?;
        }
    }
    Ok(())
}

/// Normal(0, std) draws without a distributions dependency (Box–Muller).
mod rand_distr_free {
    use rand::Rng;

    pub fn normal(rng: &mut impl Rng, n: usize, std: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let u1: f64 = rng.random::<f64>().max(1e-12);
                let u2: f64 = rng.random();
                ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32 * std
            })
            .collect()
    }
}
