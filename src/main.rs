//! `realign`: the command-line front of the RLHF system. Each subcommand lives in `src/cli/<name>.rs`
//! as a clap `Args` struct and a `run` function; this file only wires them up.

use clap::{Parser, Subcommand};

mod cli;

#[derive(Parser)]
#[command(
    name = "realign",
    version,
    about = "RLHF post-training for LLMs, colocated rollout and training"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the devices realign can use (CPU, and each CUDA GPU when a driver is present).
    Devices,
    /// Sample completions for JSONL prompts with the rollout engine (paged KV cache, continuous
    /// batching); one JSON line per sample with tokens, text, log-probs and finish reason.
    Generate(cli::generate::GenerateArgs),
    /// Serve the web dashboard: live curves, samples, timelines and health warnings of the runs
    /// under a log directory.
    Dashboard(cli::dashboard::DashboardArgs),
    /// Write the main curves of one run folder as a PNG or SVG image.
    Plot(cli::plot::PlotArgs),
    /// Per-token log-probs and entropies of JSONL sequences ({"tokens": [...]} or {"text": ...})
    /// under a Hugging Face model folder.
    Score(cli::score::ScoreArgs),
    /// Run the stages of an experiment config (SFT, reward model, PPO/GRPO/RLOO/REINFORCE++) and
    /// leave a run folder with metrics, samples and checkpoints.
    Train(cli::train::TrainArgs),
    /// Validate a config without allocating anything; print it resolved, with a peak-memory
    /// estimate per dataflow call.
    Check(cli::check::CheckArgs),
    /// Import a llama.cpp GGUF model into a Hugging Face folder (dequantised weights, config.json,
    /// tokenizer files with the chat template).
    ImportGguf(cli::import_gguf::ImportGgufArgs),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Devices => cli::devices::run(),
        Command::Generate(args) => cli::generate::run(args),
        Command::Dashboard(args) => cli::dashboard::run(args),
        Command::Plot(args) => cli::plot::run(args),
        Command::Score(args) => cli::score::run(args),
        Command::Train(args) => cli::train::run(args),
        Command::Check(args) => cli::check::run(args),
        Command::ImportGguf(args) => cli::import_gguf::run(args),
    };
    if let Err(e) = result {
        // One clear sentence (with its causes) instead of a panic or a debug dump.
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
