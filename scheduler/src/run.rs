//! `realign train`: resolve the config, open (or resume) the run folder, run the stages in order
//! and hand each one's output model to the next.
//!
//! Run folder (`run.output_dir/run.name`):
//! - `config.toml`: the resolved config (overrides applied, defaults filled in);
//! - `metrics.jsonl`, `tb/`, `samples/`, `timeline.jsonl`: see `logging`;
//! - `models/init/`: the fresh model of `model.init`; `models/stage<i>_<kind>/`: each finished
//!   stage's output (HF layout, with tokenizer files; PPO adds `stage<i>_ppo_critic/`);
//! - `checkpoints/step_N/`: see `checkpoint`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use kernels::{DType, Device};

use crate::checkpoint::{self, TrainState};
use crate::config::{self, Config, RlReward, StageConfig};
use crate::data::Datasets;
use crate::logging::RunLog;
use crate::models::{self, Model};
use crate::stages;
use model::tokenizer::Tokenizer;

/// How a stage ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Finished,
    /// Ctrl-C: a checkpoint was saved; the run stops.
    Interrupted,
}

/// What `train` returns: where the run is and how it ended.
#[derive(Debug)]
pub struct Outcome {
    pub run_dir: PathBuf,
    pub interrupted: bool,
    pub global_step: u64,
}

/// Everything the stages share.
pub struct Run {
    pub cfg: Config,
    pub dir: PathBuf,
    pub device: Device,
    pub dtype: DType,
    pub tok: Tokenizer,
    /// Tokenizer files copied into every export.
    pub tokenizer_dir: PathBuf,
    pub data: Datasets,
    pub log: RunLog,
    pub t0: Instant,
    pub stop: Arc<AtomicBool>,
    pub state: TrainState,
    /// Show a progress bar (off in tests).
    pub progress: bool,
    /// Stop (with a checkpoint) once this many steps are done over all stages.
    pub stop_after: Option<u64>,
}

impl Run {
    /// Ctrl-C was pressed, or `stop_after` steps are done: save a checkpoint and stop.
    pub fn should_stop(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
            || self.stop_after.is_some_and(|n| self.state.global_step >= n)
    }

    /// `models/stage<i>_<name>`.
    pub fn stage_output(&self, i: usize, suffix: &str) -> PathBuf {
        let kind = self.cfg.stages[i].name();
        self.dir
            .join("models")
            .join(format!("stage{i}_{kind}{suffix}"))
    }

    /// The policy a stage starts from: the output of the last policy-training stage (sft or RL)
    /// before it, or the initial model.
    pub fn policy_source(&self, stage: usize) -> Result<PathBuf> {
        for j in (0..stage).rev() {
            if !matches!(self.cfg.stages[j], StageConfig::Rm(_)) {
                return Ok(self.stage_output(j, ""));
            }
        }
        models::initial_model_dir(&self.cfg, &self.dir)
    }

    /// The reward model an RL stage scores with: `path`, else the last `rm` stage before it.
    pub fn reward_model_source(&self, stage: usize, r: &config::ModelReward) -> Result<PathBuf> {
        if let Some(p) = &r.path {
            return Ok(p.clone());
        }
        for j in (0..stage).rev() {
            if matches!(self.cfg.stages[j], StageConfig::Rm(_)) {
                return Ok(self.stage_output(j, ""));
            }
        }
        bail!("stage[{stage}] has `reward = {{ type = \"model\" }}` but no `rm` stage comes before it and no `path` is given")
    }

    pub fn load_model(&self, dir: &Path) -> Result<Model> {
        models::load(dir, &self.device, self.dtype)
    }

    /// Token ids of a prompt: the text as is, or wrapped as one user message in the tokenizer's
    /// chat template (with the assistant's generation prompt) when `data.chat_template` is set.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        if self.cfg.data.chat_template {
            let msg = model::chat_template::ChatMessage::new("user", text);
            self.tok.encode_chat(&[msg], true)
        } else {
            self.tok.encode(text, false)
        }
    }

    /// Token ids of a response text (no special tokens added).
    pub fn encode_response(&self, text: &str) -> Result<Vec<u32>> {
        self.tok.encode(text, false)
    }

    /// `prompt` followed by `response` and EOS: an SFT or preference target (the model learns to
    /// stop after its answer).
    pub fn with_response(&self, prompt: &[u32], response: &str) -> Result<Vec<u32>> {
        let mut tokens = prompt.to_vec();
        tokens.extend(self.encode_response(response)?);
        tokens.push(self.eos());
        Ok(tokens)
    }

    /// The end-of-sequence id appended to SFT and preference targets (the model learns to stop).
    pub fn eos(&self) -> u32 {
        self.tok.eos_ids[0]
    }
}

/// Options of one `train` call besides the config.
#[derive(Default)]
pub struct TrainOptions {
    /// Continue the run in this folder from its newest complete checkpoint.
    pub resume: Option<PathBuf>,
    pub progress: bool,
    /// Set to true (e.g. by Ctrl-C) to save a checkpoint and stop.
    pub stop: Option<Arc<AtomicBool>>,
    /// Save a checkpoint and stop once this many steps (over all stages) are done: train a run
    /// in slices with `--stop-after N` and `--resume`.
    pub stop_after: Option<u64>,
}

/// Checks that only need the config file (and the files it names): what `realign check` runs.
pub fn resolve(path: &Path, overrides: &[String]) -> Result<Config> {
    let cfg = config::load(path, overrides)?;
    config::validate(&cfg)?;
    check_reward_sources(&cfg)?;
    let est = crate::memory::estimate(&cfg)?;
    crate::memory::check_fits(&cfg, &est, None)?;
    Ok(cfg)
}

fn check_reward_sources(cfg: &Config) -> Result<()> {
    for (i, s) in cfg.stages.iter().enumerate() {
        if let StageConfig::Rl(rl) = s {
            if let RlReward::Model(m) = &rl.reward {
                match &m.path {
                    Some(p) if !p.join("config.json").is_file() => bail!(
                        "`stage[{i}].reward.path`: {} is not an HF model folder (no config.json)",
                        p.display()
                    ),
                    None if !cfg.stages[..i]
                        .iter()
                        .any(|s| matches!(s, StageConfig::Rm(_))) =>
                    {
                        bail!("`stage[{i}].reward` is `model` but no `rm` stage comes before it; add one or set `reward.path`")
                    }
                    _ => {}
                }
            }
            if let RlReward::Rule(r) = &rl.reward {
                reward::build_reward(r).with_context(|| format!("`stage[{i}].reward`"))?;
            }
        }
    }
    Ok(())
}

/// Runs (or resumes) the whole pipeline of `cfg`.
pub fn train(cfg: Config, opts: TrainOptions) -> Result<Outcome> {
    let dir = match &opts.resume {
        Some(d) => d.clone(),
        None => cfg.run.output_dir.join(&cfg.run.name),
    };
    let resumed = match &opts.resume {
        Some(d) => {
            checkpoint::remove_stale_staging(d)?;
            match checkpoint::latest(d)? {
                Some(ck) => Some((ck.clone(), checkpoint::read_state(&ck)?)),
                None => {
                    tracing::warn!(run = %d.display(), "no complete checkpoint; starting from the beginning");
                    None
                }
            }
        }
        None => {
            if checkpoint::latest(&dir)?.is_some() {
                bail!(
                    "the run folder {} already has checkpoints; continue it with `--resume {}` or choose another `run.name`",
                    dir.display(),
                    dir.display()
                );
            }
            None
        }
    };
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create run folder {}", dir.display()))?;
    crate::atomic::write_file(&dir.join("config.toml"), toml::to_string(&cfg)?.as_bytes())?;

    let device = Device::parse(&cfg.run.device)
        .with_context(|| format!("`run.device` = {}", cfg.run.device))?;
    let dtype = models::parse_dtype(&cfg.run.dtype)?;
    let init_dir = models::initial_model_dir(&cfg, &dir)?;
    let model_cfg = model::ModelConfig::from_file(&init_dir.join("config.json"))?;
    let tok = Tokenizer::from_dir(&init_dir)?;
    if tok.vocab_size() > model_cfg.vocab_size {
        bail!(
            "model and tokenizer do not match: the tokenizer has ids up to {} but the model's vocab_size is {}",
            tok.vocab_size() - 1,
            model_cfg.vocab_size
        );
    }
    if tok.eos_ids.is_empty() {
        bail!(
            "no end-of-sequence token: neither {0}/generation_config.json, {0}/config.json (eos_token_id) nor tokenizer_config.json (eos_token) names one",
            init_dir.display()
        );
    }
    if cfg.data.chat_template {
        tok.chat_template().with_context(|| {
            format!(
                "`data.chat_template = true` but the tokenizer in {} has no usable chat template",
                init_dir.display()
            )
        })?;
    }
    let data = Datasets::load(&cfg)?;
    let log = RunLog::open(&dir)?;
    let (state, ckpt) = match resumed {
        Some((ck, st)) => {
            tracing::info!(checkpoint = %ck.display(), step = st.global_step, "resuming");
            (st, Some(ck))
        }
        None => (
            TrainState {
                seed: cfg.run.seed,
                ..Default::default()
            },
            None,
        ),
    };
    let mut run = Run {
        cfg,
        dir: dir.clone(),
        device,
        dtype,
        tok,
        tokenizer_dir: init_dir,
        data,
        log,
        t0: Instant::now(),
        stop: opts.stop.unwrap_or_default(),
        state,
        progress: opts.progress,
        stop_after: opts.stop_after,
    };
    let stages = run.cfg.stages.clone();
    let mut ckpt = ckpt;
    for (i, stage) in stages.iter().enumerate() {
        if i < run.state.stage {
            continue;
        }
        // A checkpoint taken inside this stage holds its weights; otherwise start fresh.
        let resume_from = ckpt.take().filter(|_| run.state.stage_step > 0);
        tracing::info!(stage = i, kind = stage.name(), "stage starts");
        let flow = match stage {
            StageConfig::Sft(s) => stages::sft::run(&mut run, i, s, resume_from.as_deref())?,
            StageConfig::Rm(s) => stages::rm::run(&mut run, i, s, resume_from.as_deref())?,
            StageConfig::Rl(s) => stages::rl::run(&mut run, i, s, resume_from.as_deref())?,
        };
        if flow == Flow::Interrupted {
            return Ok(Outcome {
                run_dir: dir,
                interrupted: true,
                global_step: run.state.global_step,
            });
        }
        // The stage's output is published; record that the next stage starts fresh.
        run.state.stage = i + 1;
        run.state.stage_step = 0;
        run.state.cursor = Default::default();
        run.state.kl_coef = None;
        run.state.shaping = None;
        checkpoint::save(&run.dir, &run.state, run.cfg.run.keep_checkpoints, |_| {
            Ok(())
        })?;
    }
    Ok(Outcome {
        run_dir: dir,
        interrupted: false,
        global_step: run.state.global_step,
    })
}
