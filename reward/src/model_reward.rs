//! Model reward: an HF-layout `*ForSequenceClassification` checkpoint (one label, `score.weight`)
//! scores the LAST token of prompt + response, as transformers' pooled output does.
//!
//! Sequences are packed back to back without padding (the layout every op in kernels/ uses) into
//! forwards of at most `max_batch_tokens` tokens, on the device the weights live on. The forward is
//! CPU- or GPU-bound and synchronous, so it runs on tokio's blocking pool, not on the async
//! workers.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use kernels::{DType, Device};
use model::llama::{forward, last_token_scores, values, Batch, Keep};
use model::{Head, ModelConfig, Params};
use serde::{Deserialize, Serialize};

use crate::reward_trait::{BoxFuture, Reward};
use crate::sample::{Sample, Score};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRewardConfig {
    /// Checkpoint folder: config.json + model.safetensors (or a sharded index).
    pub path: PathBuf,
    /// "cpu", "cuda" or "cuda:N".
    #[serde(default = "default_device")]
    pub device: String,
    /// "f32" or "bf16"; default f32 on CPU and bf16 on CUDA.
    #[serde(default)]
    pub dtype: Option<String>,
    /// Tokens per forward; sequences are packed up to this (a longer one runs alone).
    #[serde(default = "default_max_batch_tokens")]
    pub max_batch_tokens: usize,
}

fn default_device() -> String {
    "cpu".to_string()
}

fn default_max_batch_tokens() -> usize {
    8192
}

/// The weights and config, shared with the blocking task that runs the forward.
struct Loaded {
    cfg: ModelConfig,
    params: Params,
}

pub struct ModelReward {
    name: String,
    model: Arc<Loaded>,
    max_batch_tokens: usize,
}

impl ModelReward {
    /// Loads the checkpoint named by `config` onto its device.
    pub fn load(config: &ModelRewardConfig) -> Result<Self> {
        let device = Device::parse(&config.device)
            .with_context(|| format!("model reward: device = {:?}", config.device))?;
        let dtype = match &config.dtype {
            Some(d) => d
                .parse::<DType>()
                .with_context(|| format!("model reward: dtype = {d:?}"))?,
            None if device.is_cuda() => DType::BF16,
            None => DType::F32,
        };
        let (cfg, params) =
            model::io::load_model(&config.path, &device, dtype).with_context(|| {
                format!(
                    "model reward: loading the checkpoint {}",
                    config.path.display()
                )
            })?;
        let name = format!("model:{}", config.path.display());
        ModelReward::from_params(&name, cfg, params, config.max_batch_tokens)
    }

    /// A reward model from weights already in memory (e.g. shared with a critic or loaded by the
    /// scheduler), on the device they live on.
    pub fn from_params(
        name: &str,
        cfg: ModelConfig,
        params: Params,
        max_batch_tokens: usize,
    ) -> Result<Self> {
        if cfg.head != Head::SequenceClassification || cfg.num_labels != 1 || params.score.is_none()
        {
            bail!(
                "model reward '{name}': the checkpoint is {} with {} label(s); a reward model needs a *ForSequenceClassification checkpoint with num_labels = 1 (a scalar score.weight)",
                cfg.architecture(),
                cfg.num_labels
            );
        }
        ensure!(
            max_batch_tokens > 0,
            "model reward '{name}': max_batch_tokens must be >= 1"
        );
        Ok(ModelReward {
            name: name.to_string(),
            model: Arc::new(Loaded { cfg, params }),
            max_batch_tokens,
        })
    }

    /// Scores token sequences (blocking): the score head at each sequence's last token.
    pub fn score_tokens(&self, seqs: &[Vec<u32>]) -> Result<Vec<f32>> {
        score_packed(&self.model, seqs, self.max_batch_tokens)
    }
}

fn score_packed(model: &Loaded, seqs: &[Vec<u32>], max_batch_tokens: usize) -> Result<Vec<f32>> {
    let device = model.params.embed.device().clone();
    let mut out = Vec::with_capacity(seqs.len());
    let mut start = 0;
    while start < seqs.len() {
        // Greedy packing: take sequences while they fit (always at least one).
        let mut end = start + 1;
        let mut tokens = seqs[start].len();
        while end < seqs.len() && tokens + seqs[end].len() <= max_batch_tokens {
            tokens += seqs[end].len();
            end += 1;
        }
        let group = &seqs[start..end];
        let batch = Batch::from_sequences(group, &device)
            .with_context(|| format!("samples {start}..{end}"))?;
        batch.check_vocab(model.cfg.vocab_size).with_context(|| {
            format!("samples {start}..{end} (sequence numbers count from {start})")
        })?;
        let acts = forward(&model.params, &model.cfg, &batch, Keep::OutputOnly)
            .with_context(|| format!("forward of samples {start}..{end}"))?;
        // [N,C] hidden -> [N] values -> one per sequence (its last token)
        let v = values(&model.params, &acts.hidden)?;
        out.extend(last_token_scores(&v, &batch)?);
        start = end;
    }
    Ok(out)
}

impl Reward for ModelReward {
    fn name(&self) -> &str {
        &self.name
    }

    fn score<'a>(&'a self, samples: &'a [Sample]) -> BoxFuture<'a, Result<Vec<Score>>> {
        Box::pin(async move {
            let mut seqs = Vec::with_capacity(samples.len());
            for (i, s) in samples.iter().enumerate() {
                let seq: Vec<u32> = s
                    .prompt_tokens
                    .iter()
                    .chain(&s.response_tokens)
                    .copied()
                    .collect();
                ensure!(
                    !seq.is_empty(),
                    "model reward '{}': sample {i} has no prompt or response tokens",
                    self.name
                );
                self.model
                    .cfg
                    .check_seq_len(seq.len())
                    .with_context(|| format!("model reward '{}': sample {i}", self.name))?;
                seqs.push(seq);
            }
            let (model, max_tokens) = (self.model.clone(), self.max_batch_tokens);
            let scores =
                tokio::task::spawn_blocking(move || score_packed(&model, &seqs, max_tokens))
                    .await
                    .context("the reward model's forward task panicked")?
                    .with_context(|| format!("model reward '{}'", self.name))?;
            Ok(scores.into_iter().map(Score::new).collect())
        })
    }
}
