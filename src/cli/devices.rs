//! `realign devices`: what this machine can run on.

pub fn run() -> anyhow::Result<()> {
    println!("cpu");
    if kernels::cuda::is_available() {
        let dev = kernels::Device::cuda(0)?;
        println!("{dev} (CUDA available)");
    } else {
        println!("no CUDA driver or GPU found");
    }
    Ok(())
}
