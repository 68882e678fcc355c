//! RabbitMQ's shovel plugin as the benchmark drives it: a dynamic shovel declared with
//! `rabbitmqctl set_parameter shovel NAME {...}` on the node that runs it, and cleared to stop it.

use anyhow::Context;
use serde_json::json;
use setgate_testkit::{wait_until, Node};
use std::time::Duration;

/// A dynamic shovel from `src_queue` at `src` to `dest_queue` at `dst`: on-confirm, persistent
/// messages kept as they are, `src-prefetch-count` = `prefetch`, with `add-forward-headers` if
/// `forward_headers`. The keys are those of the plugin shipped with Debian's rabbitmq-server
/// (3.10).
pub fn definition(
    src: &Node,
    src_queue: &str,
    (dst, dest_queue): (&Node, &str),
    prefetch: u32,
    forward_headers: bool,
) -> serde_json::Value {
    json!({
        "src-protocol": "amqp091",
        "src-uri": plugin_uri(src),
        "src-queue": src_queue,
        "src-prefetch-count": prefetch,
        "dest-protocol": "amqp091",
        "dest-uri": plugin_uri(dst),
        "dest-queue": dest_queue,
        "ack-mode": "on-confirm",
        "reconnect-delay": 1,
        "add-forward-headers": forward_headers,
    })
}

/// The node's AMQP URI as the plugin wants it: the default vhost is the URI without a path.
fn plugin_uri(node: &Node) -> String {
    node.amqp_uri().replace("/%2f", "")
}

/// Declares shovel `name` on `runner` (a node with `rabbitmq_shovel`); with `wait`, returns once
/// `shovel_status` says it runs.
pub async fn start(
    runner: &Node,
    name: &str,
    definition: &serde_json::Value,
    wait: bool,
) -> anyhow::Result<()> {
    runner
        .ctl(&["set_parameter", "shovel", name, &definition.to_string()])
        .await?;
    if wait {
        wait_until(
            "the plugin's shovel running",
            Duration::from_secs(60),
            || async {
                (state(runner, name).await.ok()?.as_deref() == Some("running")).then_some(())
            },
        )
        .await?;
    }
    Ok(())
}

/// Clears shovel `name` and waits until the plugin no longer lists it.
pub async fn stop(runner: &Node, name: &str) -> anyhow::Result<()> {
    runner.ctl(&["clear_parameter", "shovel", name]).await?;
    wait_until(
        "the plugin's shovel gone",
        Duration::from_secs(60),
        || async { state(runner, name).await.ok()?.is_none().then_some(()) },
    )
    .await
}

/// The shovel's state in `shovel_status` (`starting`, `running`, ...), None when not listed.
async fn state(runner: &Node, name: &str) -> anyhow::Result<Option<String>> {
    let out = runner
        .ctl(&["shovel_status", "--formatter", "json"])
        .await?;
    let list: serde_json::Value =
        serde_json::from_str(&out).with_context(|| format!("shovel_status printed {out}"))?;
    Ok(list
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["name"] == name)
        .map(|s| s["state"].as_str().unwrap_or("?").to_string()))
}
