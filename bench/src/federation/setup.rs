//! What the cases run against: the setgate binary with a link, and the federation plugin with an
//! upstream and a policy.

use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use serde_json::json;
use setgate_testkit::amqp::connect;
use setgate_testkit::config::{Config, Link, Upstream};
use setgate_testkit::fed::wait_running;
use setgate_testkit::setgate::SetgateOptions;
use setgate_testkit::{wait_until, Node, Setgate};
use std::path::Path;
use std::time::Duration;

/// Starts setgate with one on-confirm link `src -> dst` for `exchange`; waits until it runs.
pub async fn start_setgate(
    bin: &Path,
    src: &str,
    dst: &str,
    exchange: &str,
    prefetch: u32,
) -> anyhow::Result<Setgate> {
    let cfg = Config::new()
        .upstream(
            Upstream::new("src", &[src])
                .prefetch_count(prefetch)
                .ack_mode("on-confirm"),
        )
        .link(Link::new("bench", &["src"], "dst", &[dst], &[exchange]));
    let quiet = SetgateOptions {
        quiet: true,
        ..Default::default()
    };
    let sg = Setgate::start_with(bin, &cfg, quiet).await?;
    wait_running(&sg, "bench").await?;
    Ok(sg)
}

/// Federates `exchange` from `src` to `dst` with RabbitMQ's plugin (on `dst`): an upstream and
/// a policy, then waits until a probe message crosses.
pub async fn start_plugin(
    src: &Node,
    dst: &Node,
    exchange: &str,
    prefetch: u32,
) -> anyhow::Result<()> {
    let upstream = json!({
        "uri": src.amqp_uri().replace("/%2f", ""),
        "ack-mode": "on-confirm",
        "prefetch-count": prefetch,
        "trust-user-id": false,
    });
    dst.ctl(&[
        "set_parameter",
        "federation-upstream",
        "src",
        &upstream.to_string(),
    ])
    .await?;
    let pattern = format!("^{}$", exchange.replace('.', "\\."));
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
    ch.queue_bind(
        "bench.probe".into(),
        exchange.into(),
        "probe".into(),
        Default::default(),
        FieldTable::default(),
    )
    .await?;
    let pub_conn = connect(&src.amqp_uri()).await?;
    let pub_ch = pub_conn.create_channel().await?;
    wait_until(
        "the federation plugin's link",
        Duration::from_secs(60),
        || {
            let (ch, pub_ch) = (ch.clone(), pub_ch.clone());
            async move {
                let props = BasicProperties::default();
                let opts = BasicPublishOptions::default();
                let _ = pub_ch
                    .basic_publish(exchange.into(), "probe".into(), opts, b"probe", props)
                    .await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                ch.basic_get("bench.probe".into(), Default::default())
                    .await
                    .ok()
                    .flatten()
                    .map(|_| ())
            }
        },
    )
    .await?;
    let _ = conn.close(200, "OK".into()).await;
    let _ = pub_conn.close(200, "OK".into()).await;
    Ok(())
}
