//! The engine the scheduler (and `realign generate`) calls: weights in, completions out. It sizes
//! the KV pool from a memory budget, runs the rollout loop, and releases the pool before returning.

use anyhow::Context;
use kernels::Device;
use model::{ModelConfig, Params};
use serde::{Deserialize, Serialize};

use crate::llama::LlamaRunner;
use crate::request::{Completion, Request, RolloutStats};
use crate::rollout::{run_rollout, RolloutConfig};
use crate::step_model::StepModel;

/// How much memory the KV cache may take.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KvBudget {
    Bytes(usize),
    /// This fraction of the device's free memory at the start of the rollout (on the CPU: of the
    /// available system memory).
    FreeFraction(f64),
}

/// Engine settings; the defaults suit one GPU.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct EngineConfig {
    /// Tokens per KV block.
    pub block_size: usize,
    pub kv_budget: KvBudget,
    /// Tokens one step may process (prefill tokens + one per decoding sequence).
    pub max_batch_tokens: usize,
    /// Sequences decoding at once.
    pub max_running: usize,
    /// Let the n samples of one prompt share its KV blocks.
    pub share_prefixes: bool,
    /// Run decode steps on a GPU as CUDA graphs (docs/rollout.md, "Speed"; the default since a
    /// GPU GRPO run with them, 2026-11-29). `REALIGN_CUDA_GRAPHS=1` / `=0` turns them on / off for
    /// every engine. Ignored on the CPU.
    pub cuda_graphs: bool,
    /// Overlap the host's preparation of each decode step with the device's previous step
    /// (`RolloutConfig::overlap`; same completions either way; docs/rollout.md). On by default
    /// since its GPU tests passed and it measured faster on an H100 (2026-12-07).
    /// `REALIGN_OVERLAP=1` / `=0` turns it on / off for every engine.
    pub overlap: bool,
    /// Fold each paged decode step's q/k/v epilogue into the attention kernel
    /// (`kernels::ops::paged_attention_qkv_fused`: one launch instead of two; same completions).
    /// On by default since its GPU tests passed and it measured faster on an H100 (2026-12-07).
    /// `REALIGN_DECODE_ATTN=fused` / `=split` turns it on / off for every engine.
    pub fused_attention: bool,
    /// Split each GPU decode step of at least [`crate::llama::LANE_MIN_ROWS`] rows into up to this
    /// many row blocks (1 to [`crate::llama::MAX_DECODE_LANES`], at least
    /// `LANE_MIN_ROWS / 2` rows each) whose layers run side by side on as many streams of the
    /// device, so that one block's latency-bound kernels fill the SMs the others leave idle
    /// (docs/rollout.md, item 14; same completions). 1 (off) by default until it is measured on a
    /// GPU. `REALIGN_DECODE_LANES=N` sets it for every engine. The CPU splits any step of two or
    /// more rows (for testing) and runs the blocks one after the other.
    pub decode_lanes: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            block_size: 16,
            kv_budget: KvBudget::FreeFraction(0.8),
            max_batch_tokens: 8192,
            max_running: 256,
            share_prefixes: true,
            cuda_graphs: true,
            overlap: true,
            fused_attention: true,
            decode_lanes: 1,
        }
    }
}

impl EngineConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.block_size > 0, "block_size must be at least 1");
        anyhow::ensure!(
            self.max_batch_tokens > 0,
            "max_batch_tokens must be at least 1"
        );
        anyhow::ensure!(self.max_running > 0, "max_running must be at least 1");
        anyhow::ensure!(
            (1..=crate::llama::MAX_DECODE_LANES).contains(&self.decode_lanes),
            "decode_lanes must be 1 to {}, got {}",
            crate::llama::MAX_DECODE_LANES,
            self.decode_lanes
        );
        if let KvBudget::FreeFraction(f) = self.kv_budget {
            anyhow::ensure!(
                f > 0.0 && f <= 1.0,
                "the KV budget fraction must be in (0, 1], got {f}"
            );
        }
        Ok(())
    }
}

/// The rollout engine for one model architecture.
pub struct Engine {
    model: ModelConfig,
    cfg: EngineConfig,
}

impl Engine {
    pub fn new(model: ModelConfig, cfg: EngineConfig) -> anyhow::Result<Engine> {
        cfg.validate()?;
        Ok(Engine { model, cfg })
    }

    pub fn model_config(&self) -> &ModelConfig {
        &self.model
    }

    /// Generates `n` samples for each request with the weights `params`. Completions are ordered
    /// by request, then sample.
    pub fn generate(
        &self,
        params: &Params,
        requests: Vec<Request>,
    ) -> anyhow::Result<Vec<Completion>> {
        Ok(self.generate_with_stats(params, &requests)?.0)
    }

    /// [`Engine::generate`] plus what the rollout did (steps, preemptions, peak KV use).
    pub fn generate_with_stats(
        &self,
        params: &Params,
        requests: &[Request],
    ) -> anyhow::Result<(Vec<Completion>, RolloutStats)> {
        let mut runner = LlamaRunner::new(params, &self.model)?;
        runner.use_cuda_graphs(crate::llama::graphs_env().unwrap_or(self.cfg.cuda_graphs));
        let overlap = overlap_env().unwrap_or(self.cfg.overlap);
        runner.use_overlap(overlap);
        runner.use_fused_attention(fused_attention_env().unwrap_or(self.cfg.fused_attention));
        runner.use_decode_lanes(decode_lanes_env().unwrap_or(self.cfg.decode_lanes));
        let num_blocks = self.num_blocks(&runner, params.embed.device(), requests)?;
        let cfg = RolloutConfig {
            block_size: self.cfg.block_size,
            num_blocks,
            max_batch_tokens: self.cfg.max_batch_tokens,
            max_running: self.cfg.max_running,
            share_prefixes: self.cfg.share_prefixes,
            overlap,
        };
        tracing::debug!(num_blocks, block_size = cfg.block_size, "KV pool");
        run_rollout(&mut runner, requests, &cfg)
    }

    /// Blocks the budget affords, but no more than this rollout could ever use (every sample at
    /// full length, nothing shared).
    fn num_blocks(
        &self,
        model: &dyn StepModel,
        device: &Device,
        requests: &[Request],
    ) -> anyhow::Result<usize> {
        let bs = self.cfg.block_size;
        let per_block = model.kv_bytes_per_block(bs);
        let bytes = match self.cfg.kv_budget {
            KvBudget::Bytes(b) => b,
            KvBudget::FreeFraction(f) => (free_memory(device)? as f64 * f) as usize,
        };
        let most: usize = requests
            .iter()
            .map(|r| {
                let len = (r.tokens.len() + r.sampling.max_new_tokens).min(model.max_context());
                r.n * len.div_ceil(bs)
            })
            .sum();
        let blocks = (bytes / per_block).min(most);
        anyhow::ensure!(
            blocks > 0,
            "the KV budget of {bytes} bytes holds no block of {bs} tokens ({per_block} bytes)"
        );
        Ok(blocks)
    }
}

/// `REALIGN_OVERLAP=1` / `=0`: overlapped decode loop on / off whatever the engine config says;
/// unset or any other value: the config decides.
pub fn overlap_env() -> Option<bool> {
    static ON: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    *ON.get_or_init(|| match std::env::var("REALIGN_OVERLAP").as_deref() {
        Ok("1") => Some(true),
        Ok("0") => Some(false),
        _ => None,
    })
}

/// `REALIGN_DECODE_ATTN`: `fused` / `split` force [`EngineConfig::fused_attention`] on / off for
/// every engine (read once); unset or anything else leaves each engine's setting.
pub fn fused_attention_env() -> Option<bool> {
    static ON: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    *ON.get_or_init(|| match std::env::var("REALIGN_DECODE_ATTN").as_deref() {
        Ok("fused") => Some(true),
        Ok("split") => Some(false),
        _ => None,
    })
}

/// `REALIGN_DECODE_LANES`: `1` to [`crate::llama::MAX_DECODE_LANES`] forces
/// [`EngineConfig::decode_lanes`] for every engine (read once); unset or anything else leaves each
/// engine's setting.
pub fn decode_lanes_env() -> Option<usize> {
    static ON: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        std::env::var("REALIGN_DECODE_LANES")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|n| (1..=crate::llama::MAX_DECODE_LANES).contains(n))
    })
}

/// Free memory of `device` in bytes: the driver's figure on a GPU, `MemAvailable` on the CPU.
pub fn free_memory(device: &Device) -> anyhow::Result<usize> {
    match device {
        Device::Cuda(d) => Ok(kernels::cuda::kv_cache::memory_info(d)?.0),
        Device::Cpu => {
            let text = std::fs::read_to_string("/proc/meminfo")
                .context("reading /proc/meminfo for the KV budget (give it in bytes instead)")?;
            let kb = text
                .lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<usize>()
                        .ok()
                })
                .context("no MemAvailable in /proc/meminfo (give the KV budget in bytes)")?;
            Ok(kb * 1024)
        }
    }
}
