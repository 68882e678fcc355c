//! The chaos run in CI: three minutes of random real faults (kill -9, SIGSTOP, restarts of
//! brokers and of setgate, 10 s blackholes, reloads) while messages flow through the set listener
//! and the federation link. Nothing confirmed may be lost, the link may never stall silently
//! (say `running`, name no reason and move nothing while messages wait, beyond the bound a flow
//! needs to name why), and setgate's memory and descriptors end within 10% of where they
//! started. `setgate-bench chaos --minutes 30` is the long run.

mod common;

use setgate_testkit::chaos::{self, ChaosOptions};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_minutes_of_random_faults_lose_nothing() -> anyhow::Result<()> {
    // A fixed seed: a failure here can be replayed with `setgate-bench chaos --seed 20261201`.
    let report = chaos::run(ChaosOptions {
        bin: common::BIN.into(),
        duration: Duration::from_secs(180),
        every: Duration::from_secs(12),
        seed: 20261201,
        rate: 50.0,
    })
    .await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    assert_eq!(report.lost, 0, "confirmed messages lost");
    assert!(
        report.confirmed_set > 1000 && report.confirmed_fed > 1000,
        "too little traffic to prove anything: {report:?}"
    );
    let rss = report.rss_kib;
    assert!(
        rss.1 as f64 <= rss.0 as f64 * 1.10,
        "setgate's RSS grew from {} to {} KiB",
        rss.0,
        rss.1
    );
    let fds = report.fds;
    assert!(
        fds.1 as f64 <= fds.0 as f64 * 1.10,
        "setgate's open descriptors grew from {} to {}; new: {:?}, gone: {:?}",
        fds.0,
        fds.1,
        report.fds_new_kinds,
        report.fds_gone_kinds
    );
    assert!(
        report.longest_silent_stall_s == 0.0,
        "the link said `running`, named no reason and moved nothing while messages waited for \
         {:.1}s beyond the {}s naming bound: {:#?}",
        report.longest_silent_stall_s,
        chaos::NAMING_BOUND.as_secs(),
        report.silent_stalls
    );
    Ok(())
}
