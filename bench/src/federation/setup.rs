//! What the cases run against: the setgate binary with a link, and the federation plugin with an
//! upstream and a policy.

use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use serde_json::json;
use setgate_testkit::amqp::connect;
use setgate_testkit::config::{Config, Link, Upstream};
use setgate_testkit::fed::wait_running;
use setgate_testkit::pki::Pki;
use setgate_testkit::setgate::SetgateOptions;
use setgate_testkit::{wait_until, Node, Setgate};
use std::path::Path;
use std::time::Duration;

/// Starts setgate with one on-confirm link from the source's URI `src` to the downstream's
/// `dst`, for `exchanges` (a flow each), publishing with `mandatory` or not; waits until it
/// runs.
pub async fn start_setgate(
    bin: &Path,
    (src, dst): (&str, &str),
    exchanges: &[String],
    prefetch: u32,
    mandatory: bool,
    two_way: bool,
) -> anyhow::Result<Setgate> {
    let exchanges: Vec<&str> = exchanges.iter().map(String::as_str).collect();
    let upstream = |name: &str, uri: &str| {
        Upstream::new(name, &[uri])
            .prefetch_count(prefetch)
            .ack_mode("on-confirm")
    };
    let mut cfg = Config::new()
        .upstream(upstream("src", src))
        .link(Link::new("bench", &["src"], "dst", &[dst], &exchanges).with("mandatory", mandatory));
    if two_way {
        // The way back (max_hops 1): everything the first link forwards comes back to it and
        // is dropped, as in two-way federation.
        cfg = cfg.upstream(upstream("dst", dst)).link(
            Link::new("bench-back", &["dst"], "src", &[src], &exchanges)
                .with("mandatory", mandatory),
        );
    }
    let quiet = SetgateOptions {
        quiet: true,
        ..Default::default()
    };
    let sg = Setgate::start_with(bin, &cfg, quiet).await?;
    wait_running(&sg, "bench").await?;
    if two_way {
        wait_running(&sg, "bench-back").await?;
    }
    Ok(sg)
}

/// The state a drain needs the plugin's link in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginLink {
    /// Moving messages.
    Up,
    /// Disconnected, its queue on the source kept (and filling).
    Down,
}

/// The user the plugin's link connects to the source as: its permissions take the link down
/// and back without touching the upstream or the policy (a changed upstream makes the plugin
/// delete the link's queue on the source, and the backlog with it).
const LINK_USER: &str = "bench-link";

/// Takes the plugin's link down (its user loses its permissions on the source and its
/// connection is closed; its queue there stays and fills) or brings it back (permissions
/// restored; the link reconnects within its `reconnect-delay` of 1 s).
pub async fn plugin_link(src: &Node, link: PluginLink) -> anyhow::Result<()> {
    match link {
        PluginLink::Down => {
            src.ctl(&["clear_permissions", "-p", "/", LINK_USER])
                .await?;
            src.ctl(&[
                "close_all_connections",
                "bench: the link goes down for a drain",
            ])
            .await?;
            wait_until(
                "the federation plugin's link to stop consuming",
                Duration::from_secs(60),
                || async {
                    let out = src
                        .ctl(&[
                            "list_queues",
                            "name",
                            "consumers",
                            "--silent",
                            "--no-table-headers",
                        ])
                        .await
                        .ok()?;
                    out.lines()
                        .filter(|l| l.starts_with("federation: "))
                        .all(|l| l.split_whitespace().last() == Some("0"))
                        .then_some(())
                },
            )
            .await
        }
        PluginLink::Up => {
            src.ctl(&["set_permissions", "-p", "/", LINK_USER, ".*", ".*", ".*"])
                .await?;
            Ok(())
        }
    }
}

/// How the plugin's link reaches the source: `None` for plain AMQP, or the port of the source's
/// TLS listener and the bench's certificates.
pub type PluginTls<'a> = Option<(u16, &'a Pki)>;

/// Federates `exchanges` from `src` to `dst` with RabbitMQ's plugin (on `dst`): an upstream and
/// a policy, then waits until a probe message crosses each.
pub async fn start_plugin(
    src: &Node,
    dst: &Node,
    exchanges: &[String],
    prefetch: u32,
    tls: PluginTls<'_>,
) -> anyhow::Result<()> {
    src.ctl(&["add_user", LINK_USER, LINK_USER]).await?;
    src.ctl(&["set_permissions", "-p", "/", LINK_USER, ".*", ".*", ".*"])
        .await?;
    let uri = match tls {
        None => src.uri_for(LINK_USER, LINK_USER),
        Some((port, pki)) => pki.amqps_uri(LINK_USER, LINK_USER, port),
    };
    let upstream = json!({
        "uri": uri.replace("/%2f", ""),
        "ack-mode": "on-confirm",
        "prefetch-count": prefetch,
        "trust-user-id": false,
        "reconnect-delay": 1,
    });
    dst.ctl(&[
        "set_parameter",
        "federation-upstream",
        "src",
        &upstream.to_string(),
    ])
    .await?;
    let names: Vec<String> = exchanges.iter().map(|x| x.replace('.', "\\.")).collect();
    let pattern = format!("^({})$", names.join("|"));
    let policy = r#"{"federation-upstream-set":"all"}"#;
    dst.ctl(&[
        "set_policy",
        "bench-fed",
        &pattern,
        policy,
        "--apply-to",
        "exchanges",
    ])
    .await?;

    let conn = connect(&dst.amqp_uri()).await?;
    let ch = conn.create_channel().await?;
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    ch.queue_declare("bench.probe".into(), exclusive, FieldTable::default())
        .await?;
    let pub_conn = connect(&src.amqp_uri()).await?;
    let pub_ch = pub_conn.create_channel().await?;
    for exchange in exchanges {
        let exchange = exchange.as_str();
        let (queue, key) = ("bench.probe", "probe");
        ch.queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            Default::default(),
            FieldTable::default(),
        )
        .await?;
        wait_until(
            &format!("the federation plugin's link for {exchange}"),
            Duration::from_secs(60),
            || {
                let (ch, pub_ch) = (ch.clone(), pub_ch.clone());
                async move {
                    let props = BasicProperties::default();
                    let opts = BasicPublishOptions::default();
                    let _ = pub_ch
                        .basic_publish(exchange.into(), key.into(), opts, b"probe", props)
                        .await;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    ch.basic_get(queue.into(), Default::default())
                        .await
                        .ok()
                        .flatten()
                        .map(|_| ())
                }
            },
        )
        .await?;
        ch.queue_unbind(
            queue.into(),
            exchange.into(),
            key.into(),
            FieldTable::default(),
        )
        .await?;
    }
    let _ = conn.close(200, "OK".into()).await;
    let _ = pub_conn.close(200, "OK".into()).await;
    Ok(())
}
