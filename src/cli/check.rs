//! `realign check CONFIG [--set k=v ...]`: validate a config without allocating anything, print
//! the resolved config as TOML and an estimate of peak memory per dataflow call.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

#[derive(Args)]
pub struct CheckArgs {
    /// The experiment config (TOML).
    pub config: PathBuf,
    /// Override a config key, e.g. `--set run.device=cuda` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

pub fn run(args: CheckArgs) -> Result<()> {
    let cfg = scheduler::run::resolve(&args.config, &args.set)?;
    println!("{}", toml::to_string(&cfg)?);
    let model = scheduler::memory::model_config(&cfg)?;
    println!(
        "# model: {} layers, hidden {}, vocab {}, {:.2} M parameters, {} on {}",
        model.num_hidden_layers,
        model.hidden_size,
        model.vocab_size,
        model.num_params() as f64 / 1e6,
        cfg.run.dtype,
        cfg.run.device
    );
    println!("# estimated peak memory per call:");
    for e in scheduler::memory::estimate(&cfg)? {
        println!(
            "#   stage[{}] {:<12} {:>9.3} GB  ({})",
            e.stage,
            e.call,
            e.bytes as f64 / 1e9,
            e.detail
        );
    }
    println!("# ok");
    Ok(())
}
