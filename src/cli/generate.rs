//! `realign generate --model DIR --input prompts.jsonl [...]`: sample completions with the rollout
//! engine. Each input line is `{"tokens": [...]}`, `{"prompt": "..."}` (wrapped as one user turn
//! and rendered with the chat template under `--chat`) or `{"messages": [...]}` (always rendered
//! with the chat template). Each output line is one sample: the response's `tokens` and `text`,
//! `logprobs` per response token, and `finish_reason`.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use actor::{Engine, EngineConfig, KvBudget, Request, SamplingParams};
use anyhow::{bail, Context, Result};
use clap::Args;
use kernels::{DType, Device};
use model::chat_template::ChatMessage;
use model::tokenizer::Tokenizer;
use serde::Deserialize;

#[derive(Args)]
pub struct GenerateArgs {
    /// Hugging Face model folder (config.json, model.safetensors, tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    /// JSONL prompts; `-` reads standard input.
    #[arg(long)]
    pub input: PathBuf,
    /// Render `prompt` lines as one user turn through the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// Samples per prompt (they share the prompt's KV blocks).
    #[arg(long, default_value_t = 1)]
    pub n: usize,
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    #[arg(long, default_value_t = 0)]
    pub min_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// 0 = off.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Prompt i, sample j draws from a stream seeded by (seed + i, j).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Keep generating past EOS (until --max-new-tokens).
    #[arg(long)]
    pub ignore_eos: bool,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Weight and KV dtype; default f32 on the CPU, bf16 on a GPU.
    #[arg(long, value_parser = ["f32", "bf16"])]
    pub dtype: Option<String>,
    /// Fraction of free device memory the KV cache may take.
    #[arg(long, default_value_t = 0.8)]
    pub kv_fraction: f64,
    /// Tokens per KV block.
    #[arg(long, default_value_t = 16)]
    pub block_size: usize,
    /// Sequences decoding at once.
    #[arg(long, default_value_t = 256)]
    pub max_running: usize,
    /// Write JSONL here instead of standard output.
    #[arg(long)]
    pub output: Option<PathBuf>,
}

/// One input line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputLine {
    tokens: Option<Vec<u32>>,
    prompt: Option<String>,
    messages: Option<Vec<ChatMessage>>,
}

/// The prompt token ids of one input line (numbered from 1 in messages).
fn prompt_tokens(
    line: &str,
    lineno: usize,
    tok: Option<&Tokenizer>,
    chat: bool,
) -> Result<Vec<u32>> {
    let parsed: InputLine = serde_json::from_str(line).with_context(|| {
        format!(
            "input line {lineno} is not {{\"tokens\"}}, {{\"prompt\"}} or {{\"messages\"}} JSON"
        )
    })?;
    let need_tok = || {
        tok.with_context(|| {
            format!("input line {lineno} has text, but the model folder has no tokenizer.json")
        })
    };
    let ids = match (parsed.tokens, parsed.prompt, parsed.messages) {
        (Some(t), None, None) => t,
        (None, Some(p), None) if chat => {
            need_tok()?.encode_chat(&[ChatMessage::new("user", p)], true)?
        }
        (None, Some(p), None) => need_tok()?.encode(&p, true)?,
        (None, None, Some(m)) => need_tok()?.encode_chat(&m, true)?,
        _ => bail!("input line {lineno} must have exactly one of tokens, prompt, messages"),
    };
    if ids.is_empty() {
        bail!("input line {lineno} gives an empty prompt");
    }
    Ok(ids)
}

fn read_lines(path: &Path) -> Result<Vec<String>> {
    let reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let f = std::fs::File::open(path)
            .with_context(|| format!("cannot open the input file {}", path.display()))?;
        Box::new(std::io::BufReader::new(f))
    };
    let mut lines = Vec::new();
    for l in reader.lines() {
        lines.push(l.with_context(|| format!("reading {}", path.display()))?);
    }
    Ok(lines)
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let device = Device::parse(&args.device)?;
    let dtype: DType = match &args.dtype {
        Some(d) => d.parse()?,
        None if device.is_cuda() => DType::BF16,
        None => DType::F32,
    };
    let (cfg, params) = model::io::load_model(&args.model, &device, dtype)
        .with_context(|| format!("cannot load the model in {}", args.model.display()))?;
    let tok = if args.model.join("tokenizer.json").exists() {
        Some(Tokenizer::from_dir(&args.model)?)
    } else {
        None
    };
    let mut stop = cfg.eos_token_ids.clone();
    if let Some(t) = &tok {
        for &id in &t.eos_ids {
            if !stop.contains(&id) {
                stop.push(id);
            }
        }
    }
    if args.ignore_eos {
        stop.clear();
    }
    let sampling = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        min_new_tokens: args.min_new_tokens,
        max_new_tokens: args.max_new_tokens,
        stop_token_ids: stop,
    };
    sampling.validate()?;
    if args.n == 0 {
        bail!("--n must be at least 1");
    }
    let mut requests = Vec::new();
    for (i, line) in read_lines(&args.input)?.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let tokens = prompt_tokens(line, i + 1, tok.as_ref(), args.chat)?;
        let seed = args.seed.wrapping_add(requests.len() as u64);
        requests.push(Request {
            tokens,
            sampling: sampling.clone(),
            n: args.n,
            seed,
        });
    }
    if requests.is_empty() {
        bail!("{} has no prompts", args.input.display());
    }
    let engine = Engine::new(
        cfg,
        EngineConfig {
            block_size: args.block_size,
            kv_budget: KvBudget::FreeFraction(args.kv_fraction),
            max_running: args.max_running,
            ..Default::default()
        },
    )?;
    let start = Instant::now();
    let (completions, stats) = engine.generate_with_stats(&params, &requests)?;
    let secs = start.elapsed().as_secs_f64();
    let generated: usize = completions.iter().map(|c| c.tokens.len()).sum();
    tracing::info!(
        samples = completions.len(),
        generated_tokens = generated,
        seconds = format!("{secs:.2}"),
        tokens_per_s = format!("{:.1}", generated as f64 / secs.max(1e-9)),
        steps = stats.steps,
        preemptions = stats.preemptions,
        peak_kv_mib = format!("{:.1}", stats.peak_kv_bytes as f64 / (1 << 20) as f64),
        "generation done"
    );

    let mut out: Box<dyn Write> = match &args.output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p)
                .with_context(|| format!("cannot create the output file {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    for c in &completions {
        let text = match &tok {
            Some(t) => Some(t.decode(&c.tokens, true)?),
            None => None,
        };
        let line = serde_json::json!({
            "index": c.request,
            "sample": c.sample,
            "tokens": c.tokens,
            "text": text,
            "logprobs": c.logprobs,
            "finish_reason": c.finish_reason.as_str(),
        });
        writeln!(out, "{line}").context("writing the output")?;
    }
    out.flush().context("writing the output")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("actor/tests/fixtures/generate/llama_gqa")
    }

    #[test]
    fn token_lines_generate_greedy_jsonl() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.jsonl");
        std::fs::write(&input, "{\"tokens\": [5, 6, 7]}\n\n{\"tokens\": [9]}\n").unwrap();
        let output = dir.path().join("out.jsonl");
        run(GenerateArgs {
            model: fixture(),
            input,
            chat: false,
            n: 2,
            max_new_tokens: 4,
            min_new_tokens: 0,
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            seed: 0,
            ignore_eos: true,
            device: "cpu".into(),
            dtype: None,
            kv_fraction: 0.01,
            block_size: 4,
            max_running: 8,
            output: Some(output.clone()),
        })
        .unwrap();
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&output)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 4);
        for l in &lines {
            assert_eq!(l["tokens"].as_array().unwrap().len(), 4);
            assert_eq!(l["logprobs"].as_array().unwrap().len(), 4);
            assert_eq!(l["finish_reason"], "length");
            assert!(l["text"].is_null(), "the fixture has no tokenizer");
        }
        // Greedy: both samples of a prompt agree.
        assert_eq!(lines[0]["tokens"], lines[1]["tokens"]);
        assert_eq!(lines[2]["index"], 1);
    }

    #[test]
    fn bad_lines_name_the_line() {
        let e = prompt_tokens("{\"tokens\": [1], \"prompt\": \"x\"}", 3, None, false).unwrap_err();
        assert!(format!("{e:#}").contains("line 3"), "{e:#}");
        let e = prompt_tokens("{\"prompt\": \"hi\"}", 2, None, false).unwrap_err();
        assert!(format!("{e:#}").contains("no tokenizer.json"), "{e:#}");
        let e = prompt_tokens("not json", 5, None, false).unwrap_err();
        assert!(format!("{e:#}").contains("line 5"), "{e:#}");
        assert_eq!(
            prompt_tokens("{\"tokens\": [4, 2]}", 1, None, false).unwrap(),
            vec![4, 2]
        );
    }
}
