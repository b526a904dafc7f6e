//! `realign score --model DIR --input FILE.jsonl [--output FILE] [--device cpu|cuda] [--dtype f32|bf16]`
//!
//! Reads one JSON object per line, `{"tokens": [...]}` or `{"text": "..."}` (text goes through the
//! model folder's tokenizer), and writes one line per input line:
//! `{"tokens": [...], "logprobs": [...], "entropy": [...]}` where `logprobs[i]` is
//! log p(tokens[i+1] | tokens[..=i]) and `entropy[i]` is the entropy of that distribution.
//!
//! Every input line is parsed and checked before any compute, so a bad line ends the command with
//! one error naming the file and line, and nothing is written.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use kernels::{DType, Device};
use model::llama::score_sequences;
use model::{Head, ModelConfig};
use serde_json::Value;

#[derive(Args)]
pub struct ScoreArgs {
    /// Hugging Face model folder (config.json, model.safetensors, tokenizer.json for text input).
    #[arg(long)]
    pub model: PathBuf,
    /// JSON-lines input: each line {"tokens": [ids]} or {"text": "..."}.
    #[arg(long)]
    pub input: PathBuf,
    /// Where to write the JSON-lines output (standard output when absent).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Compute dtype of weights and activations (bf16 needs a GPU; log-softmax is always f32).
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    pub dtype: String,
    /// Most tokens per forward pass (sequences are packed up to this; a longer one runs alone).
    #[arg(long, default_value_t = 8192)]
    pub max_batch_tokens: usize,
}

pub fn run(args: ScoreArgs) -> Result<()> {
    let dtype: DType = args.dtype.parse()?;
    let device = Device::parse(&args.device)
        .with_context(|| format!("cannot use --device {}", args.device))?;
    if device.is_cpu() && dtype == DType::BF16 {
        bail!("--dtype bf16 needs --device cuda (the CPU backend computes in f32)");
    }
    let cfg = ModelConfig::from_file(&args.model.join(model::io::CONFIG_FILE))
        .with_context(|| format!("cannot use model folder {}", args.model.display()))?;
    if cfg.head != Head::CausalLm {
        bail!(
            "{} is a {} (a scalar head); score needs a causal LM",
            args.model.display(),
            cfg.architecture()
        );
    }
    let text = std::fs::read_to_string(&args.input)
        .with_context(|| format!("cannot read input file {}", args.input.display()))?;
    let seqs = parse_input(&text, &args.input, &args.model, &cfg)?;

    let params = model::io::load_params(&args.model, &cfg, &device, dtype)
        .with_context(|| format!("cannot load the weights of {}", args.model.display()))?;
    tracing::info!(
        sequences = seqs.len(),
        tokens = seqs.iter().map(Vec::len).sum::<usize>(),
        "scoring with {} on {device} in {dtype}",
        cfg.architecture()
    );
    let scores = score_sequences(&params, &cfg, &seqs, args.max_batch_tokens.max(1))?;

    let mut out: Box<dyn Write> = match &args.output {
        Some(p) => Box::new(BufWriter::new(
            std::fs::File::create(p)
                .with_context(|| format!("cannot create output file {}", p.display()))?,
        )),
        None => Box::new(BufWriter::new(std::io::stdout().lock())),
    };
    for (tokens, s) in seqs.iter().zip(&scores) {
        let line = serde_json::to_string(&OutputLine {
            tokens,
            logprobs: &s.logprobs,
            entropy: &s.entropy,
        })?;
        writeln!(out, "{line}").context("cannot write the output")?;
    }
    out.flush().context("cannot write the output")?;
    Ok(())
}

/// One output line. Serialised from f32 (not through `serde_json::Value`, which widens to f64), so
/// each number is printed with the shortest text that reads back as the same f32.
#[derive(serde::Serialize)]
struct OutputLine<'a> {
    tokens: &'a [u32],
    logprobs: &'a [f32],
    entropy: &'a [f32],
}

/// Token ids of every non-blank line, checked against the model; errors name `path:line`.
fn parse_input(
    text: &str,
    path: &Path,
    model_dir: &Path,
    cfg: &ModelConfig,
) -> Result<Vec<Vec<u32>>> {
    let mut tokenizer = None;
    let mut seqs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{} line {}", path.display(), i + 1);
        let tokens = parse_line(line, model_dir, &mut tokenizer).with_context(at)?;
        if tokens.is_empty() {
            bail!("{}: the sequence is empty", at());
        }
        if let Some((pos, id)) = tokens
            .iter()
            .enumerate()
            .find(|(_, &t)| t as usize >= cfg.vocab_size)
        {
            bail!(
                "{}: token id {id} (at index {pos}) is outside the model's vocabulary of {} entries",
                at(),
                cfg.vocab_size
            );
        }
        cfg.check_seq_len(tokens.len()).with_context(at)?;
        seqs.push(tokens);
    }
    if seqs.is_empty() {
        bail!("input file {} has no lines to score", path.display());
    }
    Ok(seqs)
}

/// One line: `{"tokens": [...]}` or `{"text": "..."}`.
fn parse_line(
    line: &str,
    model_dir: &Path,
    tokenizer: &mut Option<model::tokenizer::Tokenizer>,
) -> Result<Vec<u32>> {
    let v: Value = serde_json::from_str(line).context("not valid JSON")?;
    let obj = v
        .as_object()
        .context("expected a JSON object with a \"tokens\" or \"text\" field")?;
    match (obj.get("tokens"), obj.get("text")) {
        (Some(t), None) => {
            let arr = t
                .as_array()
                .context("\"tokens\" must be an array of token ids")?;
            arr.iter()
                .enumerate()
                .map(|(j, x)| {
                    x.as_u64()
                        .and_then(|x| u32::try_from(x).ok())
                        .with_context(|| {
                            format!(
                                "\"tokens\"[{j}] = {x} is not a token id (a non-negative integer)"
                            )
                        })
                })
                .collect()
        }
        (None, Some(t)) => {
            let s = t.as_str().context("\"text\" must be a string")?;
            if tokenizer.is_none() {
                *tokenizer = Some(
                    model::tokenizer::Tokenizer::from_dir(model_dir)
                        .context("\"text\" input needs the model's tokenizer")?,
                );
            }
            let tok = tokenizer.as_ref().expect("loaded just above");
            tok.encode(s, true).context("cannot tokenize \"text\"")
        }
        (Some(_), Some(_)) => bail!("give either \"tokens\" or \"text\", not both"),
        (None, None) => bail!("expected a \"tokens\" or \"text\" field"),
    }
}
