//! setgate as HAProxy's replacement in front of RabbitMQ: `tcp` listeners, TLS, balance, health
//! checks, failover, drain, reload and hostile clients — against real brokers and real clients.
//!
//! One test binary, so the three brokers of `common::shared_nodes` start once; one module per
//! concern.

#[path = "../common/mod.rs"]
mod common;

mod balance;
mod clients;
mod health;
mod lifecycle;
mod tls;

// What every module uses; each starts with `use super::*`.
use common::{add_user, shared_nodes, uri, wait_connections, BIN};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use setgate_testkit::config::{Check, Config, Listener, Pool, Server};
use setgate_testkit::setgate::SetgateOptions;
use setgate_testkit::{amqp, free_port, pki::Pki, wait_until, Cluster, Node, NodeOptions, Setgate};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Declares a queue, publishes `n` messages with confirms, consumes and acks them all.
async fn round_trip(conn: &lapin::Connection, queue: &str, n: usize) -> anyhow::Result<()> {
    let ch = amqp::confirm_channel(conn).await?;
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    for i in 0..n {
        amqp::publish_confirmed(&ch, "", queue, format!("m{i}").as_bytes()).await?;
    }
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "t".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    for i in 0..n {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("consumer ended"))??;
        assert_eq!(d.data, format!("m{i}").as_bytes());
        d.ack(BasicAckOptions::default()).await?;
    }
    Ok(())
}

/// Polls /api/pools until server `server` of `pool` has `up == want`; returns how long it took.
async fn wait_health(
    sg: &Setgate,
    pool: &str,
    server: &str,
    want: bool,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    wait_until(&format!("{pool}/{server} up={want}"), timeout, || async {
        let v = sg.get_json("/api/pools").await.ok()?;
        let up = v["pools"].as_array()?.iter().find(|p| p["name"] == pool)?["servers"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == server)?["up"]
            .as_bool()?;
        (up == want).then_some(())
    })
    .await?;
    Ok(start.elapsed())
}

/// `amqp://guest:guest@127.0.0.1:PORT/%2f`.
fn guest(port: u16) -> String {
    format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
}
