//! `realign dashboard`: serve the web dashboard over a log directory of run folders.

use anyhow::Context;
use clap::Args;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct DashboardArgs {
    /// Folder holding run folders (any folder below it with a metrics.jsonl is a run).
    #[arg(long, default_value = "runs")]
    pub logdir: PathBuf,
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Address to listen on. The default serves this machine only; use 0.0.0.0 to share the page
    /// on your network (it has no authentication).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
}

pub fn run(args: DashboardArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let bound =
            dashboard::server::bind(&args.logdir, SocketAddr::new(args.host, args.port)).await?;
        let addr = bound.local_addr()?;
        // On stdout, not only in the log: the address is what the user needs from this command.
        println!(
            "realign dashboard: http://{addr}/ (log directory {}; Ctrl-C to stop)",
            args.logdir.display()
        );
        bound
            .serve(async {
                tokio::signal::ctrl_c().await.ok();
            })
            .await
    })
}
