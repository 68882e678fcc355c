//! Helpers shared by the end-to-end tests: brokers shared by the tests of one test binary, and
//! counting connections on them.
#![allow(dead_code)] // each test binary uses a different subset

use setgate_testkit::Node;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use tokio::sync::OnceCell;

/// The setgate binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_setgate");

static SHARED: OnceCell<Vec<Node>> = OnceCell::const_new();

/// Three standalone brokers shared by every test of this binary that does not break them (no
/// kill, no stop). Tests tell their own connections apart by user name.
pub async fn shared_nodes() -> &'static [Node] {
    SHARED
        .get_or_init(|| async {
            let nodes = futures_util::future::join_all((0..3).map(|_| Node::start())).await;
            nodes
                .into_iter()
                .map(|n| n.expect("start shared broker"))
                .collect()
        })
        .await
}

/// Creates `user` (password = user) on every node.
pub async fn add_user(nodes: &[&Node], user: &str) {
    for n in nodes {
        n.add_users(&[(user.to_string(), user.to_string())])
            .await
            .expect("add user");
    }
}

/// How many connections `user` has on each node.
pub async fn connections_of(nodes: &[&Node], user: &str) -> Vec<usize> {
    let mut counts = Vec::new();
    for n in nodes {
        let users = n.connection_users().await.expect("list connections");
        counts.push(users.iter().filter(|u| *u == user).count());
    }
    counts
}

/// Waits until `user`'s connection counts per node equal `want`.
pub async fn wait_connections(nodes: &[&Node], user: &str, want: &[usize]) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let got = connections_of(nodes, user).await;
        if got == want {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("{user}'s connections per node: want {want:?}, still {got:?} after 15 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `amqp://user:user@127.0.0.1:PORT/%2f`.
pub fn uri(port: u16, user: &str) -> String {
    format!("amqp://{user}:{user}@127.0.0.1:{port}/%2f")
}

/// `setgate route --json` for `keys`: key -> (set, pool, reason).
pub fn route_cli(
    config: &Path,
    keys: &[String],
) -> BTreeMap<String, (Option<String>, String, String)> {
    let out = std::process::Command::new(BIN)
        .args(["route", "--json", "--config"])
        .arg(config)
        .args(keys)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["key"].as_str().unwrap().to_string(),
                (
                    v["set"].as_str().map(str::to_owned),
                    v["pool"].as_str().unwrap().to_string(),
                    v["reason"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}
