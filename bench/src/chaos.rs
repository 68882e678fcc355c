//! `setgate-bench chaos --minutes N`: the chaos run of `setgate_testkit::chaos`, printed as one
//! JSON line (confirmed, lost, duplicates, the longest silent stall of the link, setgate's RSS
//! and descriptors at start and end, and every fault injected); it fails when a figure is out
//! of bounds (lost > 0, a silent stall, RSS or descriptors grown by more than 10%).

use clap::Parser;
use setgate_testkit::chaos::{self, ChaosOptions};
use std::path::PathBuf;
use std::time::Duration;

/// Options of `setgate-bench chaos`.
#[derive(Parser, Debug)]
pub struct Args {
    /// How long faults keep coming.
    #[arg(long, default_value_t = 3.0)]
    minutes: f64,
    /// Seconds between faults.
    #[arg(long, default_value_t = 12.0)]
    every: f64,
    /// Seed of the fault sequence (default: from the clock; printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// Messages per second of each of the three publishers.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// The setgate binary (default: next to this program).
    #[arg(long)]
    setgate: Option<PathBuf>,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    eprintln!("chaos: seed {seed}");
    let report = chaos::run(ChaosOptions {
        bin: crate::setgate_binary(a.setgate)?,
        duration: Duration::from_secs_f64(a.minutes * 60.0),
        every: Duration::from_secs_f64(a.every),
        seed,
        rate: a.rate,
    })
    .await?;
    let mut v = serde_json::to_value(&report)?;
    v["case"] = "chaos".into();
    v["seed"] = seed.into();
    v["minutes"] = a.minutes.into();
    println!("{v}");
    anyhow::ensure!(
        report.lost == 0,
        "{} confirmed messages were lost",
        report.lost
    );
    anyhow::ensure!(
        report.longest_silent_stall_s == 0.0,
        "the link stalled silently for {:.1}s beyond the naming bound",
        report.longest_silent_stall_s
    );
    for (what, (start, end)) in [
        ("RSS (KiB)", report.rss_kib),
        (
            "open descriptors",
            (report.fds.0 as u64, report.fds.1 as u64),
        ),
    ] {
        anyhow::ensure!(
            end as f64 <= start as f64 * 1.10,
            "setgate's {what} grew from {start} to {end}"
        );
    }
    Ok(())
}
