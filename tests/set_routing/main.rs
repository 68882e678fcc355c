//! SET routing end to end: setgate reads each client's AMQP handshake, learns the user and sends
//! the connection to the broker of the SET that owns that user — real brokers, real clients
//! (lapin, pika, amqplib), real kill -9.
//!
//! One test binary, so the three brokers with their 300 users start once; one module per concern.

#[path = "../common/mod.rs"]
mod common;

mod clients;
mod failover;
mod preopen;
mod routing;

// What every module uses; each starts with `use super::*`.
use common::{route_cli, BIN};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, LongString};
use lapin::ConnectionProperties;
use setgate_testkit::config::{Check, Config, Listener, Pool, Routing};
use setgate_testkit::{amqp, wait_until, Node, Setgate};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OnceCell;

/// Three brokers: set-a, set-b and the center, shared by the tests that do not kill them, with
/// the 300 test users on each.
struct Sets {
    nodes: Vec<Node>,
}

static SETS: OnceCell<Sets> = OnceCell::const_new();

/// Held by the tests that load the machine (hundreds of connections), measure time, or hold many
/// user-* connections the 300-user test would count, so they do not run at the same time.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const USERS: usize = 300;

fn user(i: usize) -> String {
    format!("user-{i:03}")
}

/// `amqp://USER:pw@127.0.0.1:PORT/%2f`.
fn uri(user: &str, port: u16) -> String {
    format!("amqp://{user}:pw@127.0.0.1:{port}/%2f")
}

async fn sets() -> &'static Sets {
    SETS.get_or_init(|| async {
        let nodes: Vec<Node> = futures_util::future::join_all((0..3).map(|_| Node::start()))
            .await
            .into_iter()
            .map(|n| n.expect("start broker"))
            .collect();
        let users: Vec<(String, String)> =
            (0..USERS).map(|i| (user(i), "pw".to_string())).collect();
        for n in &nodes {
            n.add_users(&users).await.expect("create users");
        }
        Sets { nodes }
    })
    .await
}

/// set-a and set-b fail over to each other; keys of no SET go to the center.
fn routing() -> Routing {
    Routing::new("center")
        .set("set-a", "set-a", "set-b")
        .set("set-b", "set-b", "set-a")
}

/// A `set` listener "amqp" with set-a, set-b and center pools on the given brokers, [`routing`].
fn set_config(a: &Node, b: &Node, center: &Node) -> Config {
    let check = Check::amqp().inter("300ms").fall(2).rise(2).timeout("1s");
    let pool = |name: &str, server: &str, node: &Node| {
        Pool::new(name)
            .check(check.clone())
            .server(server, node.amqp_addr())
    };
    Config::new()
        .listener(Listener::set("amqp").handshake_timeout("2s"))
        .pool(pool("set-a", "a1", a))
        .pool(pool("set-b", "b1", b))
        .pool(pool("center", "c1", center))
        .routing(routing())
}

/// [`set_config`] over the shared SETs.
fn shared_config(s: &Sets) -> Config {
    let n = &s.nodes;
    set_config(&n[0], &n[1], &n[2])
}

/// setgate over the shared SETs routed by `routing`; returns it with its listener's port.
async fn shared_edge(s: &Sets, routing: Routing) -> anyhow::Result<(Setgate, u16)> {
    let sg = Setgate::start(BIN, &shared_config(s).routing(routing)).await?;
    sg.wait_ready().await?;
    let port = sg.port("amqp").await?;
    Ok((sg, port))
}

/// Connects as `user` with a wrong password through setgate on `port` and checks that the
/// client gets the broker's own refusal (403 ACCESS_REFUSED), as it would without setgate.
async fn assert_wrong_password_refused(user: &str, port: u16) {
    let err = amqp::connect(&format!("amqp://{user}:wrong@127.0.0.1:{port}/%2f"))
        .await
        .expect_err("wrong password");
    let text = format!("{err:#}");
    assert!(
        text.contains("ACCESS_REFUSED") || text.contains("403"),
        "{text}"
    );
}

fn node_of<'a>(s: &'a Sets, pool: &str) -> &'a Node {
    match pool {
        "set-a" => &s.nodes[0],
        "set-b" => &s.nodes[1],
        "center" => &s.nodes[2],
        other => panic!("unknown pool {other}"),
    }
}

async fn publish_and_consume(conn: &lapin::Connection, queue: &str) -> anyhow::Result<()> {
    let ch = amqp::confirm_channel(conn).await?;
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    amqp::publish_confirmed(&ch, "", queue, b"hello").await?;
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await?
        .ok_or_else(|| anyhow::anyhow!("no delivery"))??;
    anyhow::ensure!(d.data == b"hello");
    d.ack(BasicAckOptions::default()).await?;
    Ok(())
}
