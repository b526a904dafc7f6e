//! Serves the dashboard without building the whole `realign` binary, for working on the page:
//! `cargo run -p dashboard --example serve -- LOGDIR [PORT]`.

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let logdir = std::path::PathBuf::from(args.next().unwrap_or_else(|| "runs".into()));
    let port: u16 = args.next().map_or(Ok(8080), |p| p.parse())?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let bound = dashboard::server::bind(&logdir, ([127, 0, 0, 1], port).into()).await?;
        println!("http://{}/", bound.local_addr()?);
        bound.serve(std::future::pending()).await
    })
}
