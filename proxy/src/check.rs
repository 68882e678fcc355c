//! The active health-check probes (`tcp`, `amqp`, `http`) and the task that runs them for one server.

use crate::addr::ServerAddr;
use crate::amqp::{self, frame};
use crate::config::{CheckConfig, CheckKind};
use crate::pool::CheckRecord;
use crate::shared::Shared;
use crate::stream::{connect_tcp, Stream};
use amq_protocol::types::FieldTable;
use http_body_util::Empty;
use hyper::body::Bytes;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::AsyncWriteExt;
use tracing::{info, warn};

/// One probe: `Ok` when the server is healthy (with the broker's server properties, for an `amqp`
/// check), otherwise why not.
async fn probe(
    kind: CheckKind,
    check: &CheckConfig,
    addr: &ServerAddr,
    tls: Option<&crate::upstream::PoolTls>,
) -> Result<Option<FieldTable>, String> {
    match kind {
        CheckKind::Tcp => connect_tcp(addr)
            .await
            .map(|_| None)
            .map_err(|e| e.to_string()),
        CheckKind::Amqp => {
            let tcp = connect_tcp(addr).await.map_err(|e| e.to_string())?;
            let mut stream = match tls {
                Some(tls) => tls
                    .connect(tcp, addr)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?,
                None => Stream::Tcp(tcp),
            };
            stream
                .write_all(amqp::PROTOCOL_HEADER)
                .await
                .map_err(|e| e.to_string())?;
            let mut buf = Vec::new();
            let f = frame::read_frame(&mut stream, &mut buf, frame::HANDSHAKE_FRAME_MAX)
                .await
                .map_err(|e| e.to_string())?;
            let props = frame::expect_start(&f)
                .map_err(|e| e.to_string())?
                .server_properties
                .clone();
            // Leave the way a client that changed its mind would: a clean FIN, not a reset.
            let _ = stream.shutdown().await;
            Ok(Some(props))
        }
        CheckKind::Http => http_probe(check, addr).await.map(|()| None),
    }
}

async fn http_probe(check: &CheckConfig, addr: &ServerAddr) -> Result<(), String> {
    use base64::Engine;
    let tcp = connect_tcp(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = hyper::Request::get(&check.path).header("host", addr.to_string());
    if let Some(auth) = &check.auth {
        let token = base64::engine::general_purpose::STANDARD.encode(auth.expose());
        req = req.header("authorization", format!("Basic {token}"));
    }
    let req = req.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    if status == check.expect_status {
        Ok(())
    } else {
        Err(format!(
            "GET {} answered {status}, expected {}",
            check.path, check.expect_status
        ))
    }
}

/// Checks one server until it leaves the config (or setgate stops).
///
/// Each round re-reads the current snapshot, so a reload that changes the check applies at the next
/// round, and a reload that removes the server (or replaces its state) ends this task.
pub(crate) async fn run(shared: Arc<Shared>, pool_name: String, server_name: String) {
    let Some(state) = shared.server_state(&pool_name, &server_name) else {
        return;
    };
    loop {
        let (check, addr, tls, on_down) = {
            let snap = shared.snapshot();
            let Some(pool) = snap.pools.get(&pool_name) else {
                return;
            };
            let Some(server) = pool.pool.server(&server_name) else {
                return;
            };
            if !Arc::ptr_eq(&server.state, &state) {
                return;
            }
            let addr = match server.cfg.check_port {
                Some(port) => server.addr.with_port(port),
                None => server.addr.clone(),
            };
            (
                pool.pool.cfg.check.clone(),
                addr,
                pool.tls.clone(),
                pool.pool.cfg.on_marked_down,
            )
        };
        let started = Instant::now();
        let result = match tokio::time::timeout(
            check.timeout,
            probe(check.kind, &check, &addr, tls.as_ref()),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {:?}", check.timeout)),
        };
        let duration = started.elapsed();
        let labels = [("pool", pool_name.clone()), ("server", server_name.clone())];
        metrics::histogram!("setgate_check_duration_seconds", &labels)
            .record(duration.as_secs_f64());
        let result = match result {
            Ok(Some(props)) => {
                state.set_broker_properties(props);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => {
                metrics::counter!("setgate_check_failures_total", &labels).increment(1);
                Err(e)
            }
        };
        let rec = CheckRecord {
            ok: result.is_ok(),
            at: SystemTime::now(),
            duration,
            error: result.err(),
        };
        let error = rec.error.clone();
        let (changed, health) = state.record_check(rec, check.rise, check.fall);
        match changed {
            Some(true) => info!(pool = %pool_name, server = %server_name, %addr, "server is UP"),
            Some(false) => {
                warn!(pool = %pool_name, server = %server_name, %addr, error = error.as_deref().unwrap_or(""), "server is DOWN");
                if on_down.is_some() {
                    state.marked_down.notify_waiters();
                }
            }
            None => {}
        }
        // Probes start every interval whatever they took, so a server that stops answering is
        // marked down within `fall * inter + timeout`, not `fall * (inter + timeout)`.
        let wait: Duration = health.next_interval(&check).saturating_sub(duration);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shared.stopping.cancelled() => return,
        }
    }
}
