//! The status page in a real headless Chromium: it renders the pools, and a server turns red when
//! its broker is killed. Screenshots are kept in target/status-page/ (a CI artifact).

mod common;

use common::BIN;
use setgate_testkit::config::{Check, Config, Listener, Pool};
use setgate_testkit::{Node, Setgate};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test]
async fn the_status_page_renders_pools_and_a_server_turns_red_when_its_broker_dies(
) -> anyhow::Result<()> {
    let mut node = Node::start().await?;
    let cfg = Config::new()
        .listener(Listener::tcp("amqp", "rabbit"))
        .pool(
            Pool::new("rabbit")
                .check(Check::amqp().inter("300ms").fall(2).timeout("1s"))
                .server("rabbit-1", node.amqp_addr()),
        );
    let sg = Setgate::start(BIN, &cfg).await?;
    sg.wait_ready().await?;

    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let shots = root.join("target/status-page");
    std::fs::create_dir_all(&shots)?;
    let mut browser = tokio::process::Command::new("node")
        .arg(root.join("tests/browser/status_page.js"))
        .arg(format!("http://{}/", sg.admin))
        .arg("rabbit/rabbit-1")
        .arg(&shots)
        .env("NODE_PATH", root.join("target/clients/node_modules"))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(browser.stdout.take().unwrap()).lines();
    let wait = Duration::from_secs(90);
    let up = tokio::time::timeout(wait, lines.next_line()).await??;
    assert_eq!(
        up.as_deref(),
        Some("UP"),
        "the page must show the server up first (needs scripts/setup: chromium, playwright-core)"
    );
    node.kill9();
    let down = tokio::time::timeout(wait, lines.next_line())
        .await??
        .unwrap_or_default();
    assert!(
        down.starts_with("DOWN"),
        "the page must show the server down: {down:?}"
    );
    // The row turns red (#ffebe9).
    assert!(
        down.contains("rgb(255, 235, 233)"),
        "row colour after the kill: {down}"
    );
    let status = browser.wait().await?;
    assert!(status.success(), "browser script failed");
    let shot = std::fs::metadata(shots.join("status-page.png"))?;
    assert!(
        shot.len() > 10_000,
        "screenshot too small: {} bytes",
        shot.len()
    );
    println!("screenshots in {}", shots.display());
    Ok(())
}
