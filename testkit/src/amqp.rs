//! Real AMQP clients (lapin) for tests and benchmarks.

use anyhow::Context;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use std::time::Duration;

/// Connects with a 10 s deadline.
pub async fn connect(uri: &str) -> anyhow::Result<Connection> {
    connect_with(uri, ConnectionProperties::default()).await
}

/// Connects with given properties and a 10 s deadline.
pub async fn connect_with(uri: &str, props: ConnectionProperties) -> anyhow::Result<Connection> {
    tokio::time::timeout(Duration::from_secs(10), Connection::connect(uri, props))
        .await
        .with_context(|| format!("connecting to {} timed out", redact(uri)))?
        .with_context(|| format!("connect to {}", redact(uri)))
}

/// A channel in confirm mode.
pub async fn confirm_channel(conn: &Connection) -> anyhow::Result<Channel> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(ch)
}

/// Publishes one persistent message and waits for the broker's confirm; fails on a nack.
pub async fn publish_confirmed(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
) -> anyhow::Result<()> {
    let confirm = ch
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await?
        .await?;
    anyhow::ensure!(
        confirm.is_ack(),
        "broker nacked the publish to {exchange}/{routing_key}"
    );
    Ok(())
}

/// `amqp://user:pass@host` with the password replaced, for messages.
pub fn redact(uri: &str) -> String {
    match (uri.find("://"), uri.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &uri[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &uri[..s + 3], &uri[at..])
        }
        _ => uri.to_string(),
    }
}

/// Connects over TLS trusting `ca_pem`, optionally presenting a client certificate.
pub async fn connect_tls(
    uri: &str,
    ca_pem: &str,
    client: Option<(&str, &str)>,
) -> anyhow::Result<Connection> {
    use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
    let tls = OwnedTLSConfig {
        identity: client.map(|(cert, key)| OwnedIdentity::PKCS8 {
            pem: cert.as_bytes().to_vec(),
            key: key.as_bytes().to_vec(),
        }),
        cert_chain: Some(ca_pem.to_string()),
    };
    let builder = lapin::ConnectionBuilder::new()?
        .with_uri_str(uri.to_string())
        .with_tls_config(tls);
    tokio::time::timeout(Duration::from_secs(10), builder.connect())
        .await
        .with_context(|| format!("TLS connect to {} timed out", redact(uri)))?
        .map_err(|e| anyhow::anyhow!("TLS connect to {}: {e:?}", redact(uri)))
}
