//! Runs a config through the scheduler library, as `realign train` does:
//! `cargo run --release -p scheduler --example train -- configs/quickstart.toml [--set k=v ...]`.

use anyhow::Result;

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (config, rest) = args
        .split_first()
        .ok_or_else(|| anyhow::anyhow!("usage: train CONFIG [--set k=v ...]"))?;
    let overrides: Vec<String> = rest
        .chunks(2)
        .filter(|c| c[0] == "--set" && c.len() == 2)
        .map(|c| c[1].clone())
        .collect();
    let cfg = scheduler::run::resolve(std::path::Path::new(config), &overrides)?;
    let out = scheduler::run::train(
        cfg,
        scheduler::run::TrainOptions {
            progress: true,
            ..Default::default()
        },
    )?;
    eprintln!(
        "run folder: {} ({} steps)",
        out.run_dir.display(),
        out.global_step
    );
    Ok(())
}
