//! `setgate-demo`: two datacenters on one machine, narrated. Run it through `scripts/demo`.
//!
//! dc1 has two SETs (set-a, set-b: one RabbitMQ node each) behind its setgate edge
//! (`configs/demo-dc1.toml`); dc2 has its center (one node) behind its own edge
//! (`configs/demo-dc2.toml`), which also federates the `orders` exchange from both of dc1's SETs.
//! The story: users connect through dc1's edge and land in their SETs, their orders appear in
//! dc2, set-a's broker is killed and its users fail over to set-b, set-a comes back.
//!
//! Everything it starts lives under one temporary directory and is stopped and removed on exit,
//! on Ctrl-C, and (through the harness's watchdogs) even if the demo itself is killed.

mod story;
mod world;

use clap::Parser;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "setgate-demo",
    about = "A two-datacenter setgate demo on this machine"
)]
pub struct Args {
    /// Exit after the story instead of leaving everything running until Ctrl-C (for CI).
    #[arg(long)]
    once: bool,
    /// The setgate binary (default: next to this one).
    #[arg(long)]
    setgate: Option<PathBuf>,
    /// Where demo-dc1.toml and demo-dc2.toml are (default: ./configs).
    #[arg(long, default_value = "configs")]
    configs: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("setgate-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    // The harness keeps every node's and setgate's files under this directory.
    std::env::set_var("SETGATE_TEST_DIR", &dir);
    let result = tokio::select! {
        r = run(&args) => r,
        _ = tokio::signal::ctrl_c() => {
            println!("\nCtrl-C: stopping everything the demo started...");
            Ok(())
        }
    };
    // Everything started is owned by `run`'s future, dropped by now: processes are killed and
    // their directories removed. The directory itself goes last.
    let _ = std::fs::remove_dir_all(&dir);
    match &result {
        Ok(()) => println!("stopped; nothing left running, {} removed", dir.display()),
        Err(e) => eprintln!("demo failed: {e:#}"),
    }
    result
}

async fn run(args: &Args) -> anyhow::Result<()> {
    let bin = match &args.setgate {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("setgate"),
    };
    anyhow::ensure!(
        bin.exists(),
        "setgate binary {} not found: build it first (scripts/demo does)",
        bin.display()
    );
    let mut world = world::World::start(&bin, &args.configs).await?;
    story::tell(&mut world).await?;
    println!();
    println!("== Have a look");
    println!(
        "  status pages  http://127.0.0.1:16101/ (dc1 edge)   http://127.0.0.1:16201/ (dc2 edge)"
    );
    println!("  metrics       http://127.0.0.1:16101/metrics       http://127.0.0.1:16201/metrics");
    println!("  JSON API      /api/sets /api/pools /api/links /api/shovels /api/route?key=alice");
    println!(
        "  connect       amqp://alice:pw@127.0.0.1:16100/%2f  (users: {})",
        world::USERS.join(", ")
    );
    println!(
        "  route         setgate route --config {} alice bob ops",
        args.configs.join("demo-dc1.toml").display()
    );
    if args.once {
        return Ok(());
    }
    println!("\nEverything keeps running. Press Ctrl-C to stop it all (nothing is left behind).");
    std::future::pending::<()>().await;
    Ok(())
}
