//! The demo's two datacenters: three RabbitMQ nodes on the ports `configs/demo-*.toml` name, and
//! the two setgate edges running those files.

use anyhow::Context;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::ExchangeKind;
use setgate_testkit::node::{Node, NodeOptions};
use setgate_testkit::setgate::{Setgate, SetgateOptions};
use setgate_testkit::{amqp, wait_until};
use std::path::Path;
use std::time::{Duration, Instant};

/// The demo's customers (password `pw`).
pub const USERS: [&str; 8] = [
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi",
];

/// One broker: its name in the story and its node.
pub struct Broker {
    pub name: &'static str,
    pub node: Node,
}

/// Everything the demo runs. Dropping it stops and removes all of it.
pub struct World {
    /// set-a, set-b (dc1) and the center (dc2).
    pub brokers: Vec<Broker>,
    pub dc1: Setgate,
    pub dc2: Setgate,
}

const BROKERS: [(&str, (u16, u16, u16)); 3] = [
    ("dc1-set-a", (16010, 16011, 16012)),
    ("dc1-set-b", (16020, 16021, 16022)),
    ("dc2-center", (16030, 16031, 16032)),
];

impl World {
    pub async fn start(bin: &Path, configs: &Path) -> anyhow::Result<World> {
        for (_, (a, m, d)) in BROKERS {
            for port in [a, m, d, 16100, 16101, 16200, 16201] {
                anyhow::ensure!(
                    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
                    "port {port} is in use: is another demo running? Stop it first"
                );
            }
        }
        println!("== Starting two datacenters on this machine");
        let t = Instant::now();
        let nodes = futures_util::future::join_all(BROKERS.iter().map(|(_, ports)| {
            Node::start_with(NodeOptions {
                ports: Some(*ports),
                ..Default::default()
            })
        }))
        .await;
        let mut brokers = Vec::new();
        for ((name, _), node) in BROKERS.iter().zip(nodes) {
            let node = node.with_context(|| format!("starting RabbitMQ for {name}"))?;
            prepare(name, &node).await?;
            brokers.push(Broker { name, node });
        }
        println!(
            "  3 RabbitMQ nodes up in {:.1}s: dc1-set-a :16010, dc1-set-b :16020 (dc1), dc2-center :16030 (dc2)",
            t.elapsed().as_secs_f64()
        );
        let dc1 = start_edge(bin, &configs.join("demo-dc1.toml")).await?;
        let dc2 = start_edge(bin, &configs.join("demo-dc2.toml")).await?;
        println!("  setgate dc1 edge on :16100 (set mode, admin :16101); dc2 edge on :16200 (admin :16201)");
        Ok(World { brokers, dc1, dc2 })
    }

    /// The broker called `name`, to kill or restart it.
    pub fn broker_mut(&mut self, name: &str) -> &mut Broker {
        self.brokers
            .iter_mut()
            .find(|b| b.name == name)
            .expect("known broker")
    }

    /// Which broker has a connection of `user` now.
    pub async fn where_is(&self, user: &str) -> anyhow::Result<Option<&'static str>> {
        for b in &self.brokers {
            if b.node.pid().is_none() {
                continue;
            }
            if b.node
                .connection_users()
                .await
                .unwrap_or_default()
                .iter()
                .any(|u| u == user)
            {
                return Ok(Some(b.name));
            }
        }
        Ok(None)
    }
}

/// Users, the cluster name, and the `orders` exchange on one broker.
async fn prepare(name: &str, node: &Node) -> anyhow::Result<()> {
    let mut users: Vec<(String, String)> = USERS
        .iter()
        .map(|u| (u.to_string(), "pw".to_string()))
        .collect();
    users.push(("ops".into(), "pw".into()));
    users.push(("federation".into(), "demo-secret".into()));
    node.add_users(&users).await?;
    node.ctl(&["set_cluster_name", name]).await?;
    let conn = amqp::connect(&node.amqp_uri()).await?;
    let ch = conn.create_channel().await?;
    // `orders` is federated dc1 -> dc2; the center publishes to `notify`, which dc1's shovel
    // routes per user to `inbox` of the user's SET, where a queue `inbox` collects them.
    for exchange in ["orders", "notify", "inbox"] {
        ch.exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    }
    ch.queue_declare(
        "inbox".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    ch.queue_bind(
        "inbox".into(),
        "inbox".into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    conn.close(200, "ok".into()).await?;
    Ok(())
}

async fn start_edge(bin: &Path, config: &Path) -> anyhow::Result<Setgate> {
    let text =
        std::fs::read_to_string(config).with_context(|| format!("read {}", config.display()))?;
    // The story is the output; the config files are in configs/ for whoever wants to read them.
    let quiet = SetgateOptions {
        quiet: true,
        ..Default::default()
    };
    let sg = Setgate::start_with(bin, &text, quiet).await?;
    sg.wait_ready().await?;
    Ok(sg)
}

/// Waits until dc1's edge sees `set`'s health as `healthy`.
pub async fn wait_set(world: &World, set: &str, healthy: bool) -> anyhow::Result<Duration> {
    let t = Instant::now();
    wait_until(
        &format!("{set} healthy={healthy}"),
        Duration::from_secs(60),
        || async {
            let v = world.dc1.get_json("/api/sets").await.ok()?;
            let s = v["sets"]
                .as_array()?
                .iter()
                .find(|s| s["name"] == set)?
                .clone();
            (s["healthy"] == healthy).then_some(())
        },
    )
    .await?;
    Ok(t.elapsed())
}
