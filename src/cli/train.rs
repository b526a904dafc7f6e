//! `realign train CONFIG [--set k=v ...] [--resume RUN_DIR]`: run the stages of a config (SFT,
//! reward model, RL) and leave a run folder with metrics, samples and checkpoints. Ctrl-C saves a
//! checkpoint and stops; `--resume` continues from the newest complete checkpoint.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Result};
use clap::Args;

#[derive(Args)]
pub struct TrainArgs {
    /// The experiment config (TOML). With --resume and no CONFIG, the run folder's config.toml.
    pub config: Option<PathBuf>,
    /// Override a config key, e.g. `--set stage[2].steps=50` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Continue the run in this folder from its newest complete checkpoint.
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<PathBuf>,
    /// Save a checkpoint and stop once this many steps (over all stages) are done.
    #[arg(long, value_name = "STEPS")]
    pub stop_after: Option<u64>,
    /// No progress bar (logs only).
    #[arg(long)]
    pub no_progress: bool,
}

pub fn run(args: TrainArgs) -> Result<()> {
    let config = match (&args.config, &args.resume) {
        (Some(c), _) => c.clone(),
        (None, Some(r)) => r.join("config.toml"),
        (None, None) => bail!("give a config file (or --resume RUN_DIR)"),
    };
    let cfg = scheduler::run::resolve(&config, &args.set)?;
    let stop = Arc::new(AtomicBool::new(false));
    watch_ctrl_c(stop.clone());
    let outcome = scheduler::run::train(
        cfg,
        scheduler::run::TrainOptions {
            resume: args.resume,
            progress: !args.no_progress,
            stop: Some(stop),
            stop_after: args.stop_after,
        },
    )?;
    if outcome.interrupted {
        eprintln!(
            "interrupted at step {}; continue with: realign train --resume {}",
            outcome.global_step,
            outcome.run_dir.display()
        );
    } else {
        eprintln!(
            "finished {} steps; run folder: {}",
            outcome.global_step,
            outcome.run_dir.display()
        );
    }
    Ok(())
}

/// The first Ctrl-C asks the loop to save a checkpoint and stop at the next step boundary; a
/// second one exits at once.
fn watch_ctrl_c(stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            if tokio::signal::ctrl_c().await.is_ok() {
                tracing::warn!(
                    "Ctrl-C: saving a checkpoint after the current step (Ctrl-C again to quit now)"
                );
                stop.store(true, Ordering::SeqCst);
            }
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        });
    });
}
