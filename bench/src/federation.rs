//! PLACEHOLDER: the federation benchmark.

/// Options.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs the benchmark.
pub async fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("the federation benchmark is not written yet")
}
