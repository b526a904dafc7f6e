//! `realign plot`: the main curves of one run as a PNG or SVG image.

use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct PlotArgs {
    /// The run folder (it holds metrics.jsonl).
    pub run_dir: PathBuf,
    /// Image to write, .png or .svg [default: RUN_DIR/curves.png].
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(args: PlotArgs) -> anyhow::Result<()> {
    let out = args.out.unwrap_or_else(|| args.run_dir.join("curves.png"));
    let summary = dashboard::plot::plot_run(&args.run_dir, &out)?;
    let titles: Vec<&str> = summary.panels.iter().map(|p| p.title.as_str()).collect();
    println!(
        "wrote {} ({} steps; panels: {})",
        out.display(),
        summary.steps,
        titles.join(", ")
    );
    if summary.skipped_lines > 0 {
        println!(
            "skipped {} malformed lines in metrics.jsonl",
            summary.skipped_lines
        );
    }
    Ok(())
}
