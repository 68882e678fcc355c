//! One flow's life: connect (downstream, then upstream, each trying its URIs in order), set up,
//! forward; on any failure close both connections, wait `reconnect_delay`, start over.
//!
//! Closing the upstream connection is what makes the upstream requeue every delivery that was
//! not acknowledged, so an attempt that ends for any reason loses nothing.

use crate::config::AckMode;
use crate::connect::{connect, Endpoint};
use crate::error::{LinkError, Side};
use crate::forward::{Events, Forwarder};
use crate::hops::{HopPolicy, Origin};
use crate::metrics::FlowMetrics;
use crate::plan::FlowSpec;
use crate::status::{Connected, FlowStatus};
use crate::stop::stopped;
use crate::topology::{check_exchanges, consume_upstream, ExchangeSide};
use futures_util::StreamExt;
use lapin::options::ConfirmSelectOptions;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

/// How long closing a connection may take (a stopped broker never answers).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// A running flow: its status and how to stop it.
#[derive(Debug)]
pub(crate) struct FlowHandle {
    pub status: Arc<FlowStatus>,
    /// `Some(grace)` asks the flow to stop, draining for at most `grace`.
    stop: watch::Sender<Option<Duration>>,
    task: JoinHandle<()>,
}

impl FlowHandle {
    /// Spawns the flow on the current runtime.
    pub fn spawn(spec: FlowSpec) -> FlowHandle {
        let status = Arc::new(FlowStatus::new(
            &spec.upstream.name,
            &spec.exchange,
            &spec.queue_name(),
        ));
        let (stop, stop_rx) = watch::channel(None);
        let span = tracing::info_span!("federation", link = %spec.link, upstream = %spec.upstream.name,
            exchange = %spec.exchange, downstream = %spec.downstream.name);
        let task = tokio::spawn(run(Arc::new(spec), status.clone(), stop_rx).instrument(span));
        FlowHandle { status, stop, task }
    }

    /// Asks the flow to stop: stop consuming, wait up to `grace` for confirms, ack, close.
    pub fn request_stop(&self, grace: Duration) {
        let _ = self.stop.send(Some(grace));
    }

    /// Waits for the flow to end after [`FlowHandle::request_stop`]; aborts it after `limit`.
    pub async fn join(self, limit: Duration) {
        let mut task = self.task;
        if tokio::time::timeout(limit, &mut task).await.is_err() {
            tracing::warn!(upstream = %self.status.upstream, exchange = %self.status.exchange, "flow did not stop in time; aborting it");
            task.abort();
        }
        self.status.set_stopped();
    }
}

async fn run(
    spec: Arc<FlowSpec>,
    status: Arc<FlowStatus>,
    mut stop: watch::Receiver<Option<Duration>>,
) {
    let metrics = FlowMetrics::new(&spec.link, &spec.upstream.name, &spec.exchange);
    let mut compare_types = true;
    loop {
        let result = attempt(&spec, &status, &metrics, &mut stop, &mut compare_types).await;
        metrics.running.set(0.0);
        if stop.borrow().is_some() {
            break;
        }
        let err = match result {
            Ok(()) => break,
            Err(e) => e,
        };
        if matches!(
            err,
            LinkError::ExchangeMissing { .. } | LinkError::ExchangeType { .. }
        ) {
            compare_types = true;
        }
        // A peer that went silent is knocked on again at once: the connect sends one SYN a
        // second until it answers, which a vanished host does not feel, and the flow resumes
        // within a second of the path coming back instead of up to reconnect_delay later.
        let delay = if err.peer_silent() {
            Duration::ZERO
        } else {
            spec.upstream.reconnect_delay
        };
        tracing::warn!(error = %err, retry_in = ?delay, "federation link attempt failed; retrying");
        status.set_reconnecting(err.to_string(), SystemTime::now() + delay);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stopped(&mut stop) => break,
        }
        status.counters.reconnects.fetch_add(1, Relaxed);
        metrics.reconnects.increment(1);
    }
    status.set_stopped();
    tracing::info!("federation link stopped");
}

/// One attempt: connect both sides, set up, forward until an error or a stop.
async fn attempt(
    spec: &Arc<FlowSpec>,
    status: &Arc<FlowStatus>,
    metrics: &FlowMetrics,
    stop: &mut watch::Receiver<Option<Duration>>,
    compare_types: &mut bool,
) -> Result<(), LinkError> {
    let name = format!(
        "setgate federation {}: {} -> {}",
        spec.link, spec.exchange, spec.downstream.name
    );
    let connecting = async {
        let down = connect(
            Side::Downstream,
            &spec.downstream.name,
            &spec.downstream.uris,
            &name,
        )
        .await?;
        match connect(
            Side::Upstream,
            &spec.upstream.name,
            &spec.upstream.uris,
            &name,
        )
        .await
        {
            Ok(up) => Ok((up, down)),
            Err(e) => {
                close(&down).await;
                Err(e)
            }
        }
    };
    let (up, down) = tokio::select! {
        r = connecting => r?,
        _ = stopped(stop) => return Ok(()),
    };
    let result = connected(spec, status, metrics, stop, &up, &down, compare_types).await;
    metrics.connected_uri("upstream", up.uri.masked(), false);
    metrics.connected_uri("downstream", down.uri.masked(), false);
    // Upstream first: from here on it requeues whatever was not acknowledged.
    close(&up).await;
    close(&down).await;
    result
}

async fn connected(
    spec: &Arc<FlowSpec>,
    status: &Arc<FlowStatus>,
    metrics: &FlowMetrics,
    stop: &mut watch::Receiver<Option<Duration>>,
    up: &Endpoint,
    down: &Endpoint,
    compare_types: &mut bool,
) -> Result<(), LinkError> {
    // Listen before anything can fail, so a connection error is never missed.
    let up_events = up.conn.events_listener().boxed();
    let down_events = down.conn.events_listener().boxed();
    let setup = async {
        check_exchanges(
            &spec.exchange,
            ExchangeSide {
                side: Side::Upstream,
                cluster: &spec.upstream.name,
                vhost: up.uri.vhost(),
                conn: &up.conn,
            },
            ExchangeSide {
                side: Side::Downstream,
                cluster: &spec.downstream.name,
                vhost: down.uri.vhost(),
                conn: &down.conn,
            },
            *compare_types,
        )
        .await?;
        *compare_types = false;
        let down_channel = down.conn.create_channel().await.map_err(|e| {
            LinkError::broker(
                "opening a channel",
                Side::Downstream,
                &spec.downstream.name,
                &e,
            )
        })?;
        if spec.upstream.ack_mode == AckMode::OnConfirm {
            down_channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| {
                    LinkError::broker(
                        "enabling publisher confirms",
                        Side::Downstream,
                        &spec.downstream.name,
                        &e,
                    )
                })?;
        }
        let queue = consume_upstream(&up.conn, spec).await?;
        let depth_channel = up.conn.create_channel().await.map_err(|e| {
            LinkError::broker("opening a channel", Side::Upstream, &spec.upstream.name, &e)
        })?;
        Ok::<_, LinkError>((down_channel, queue, depth_channel))
    };
    let (down_channel, queue, depth_channel) = tokio::select! {
        r = setup => r?,
        _ = stopped(stop) => return Ok(()),
    };
    status
        .counters
        .queue_depth
        .store(u64::from(queue.depth), Relaxed);
    metrics.queue_depth.set(f64::from(queue.depth));
    metrics.connected_uri("upstream", up.uri.masked(), true);
    metrics.connected_uri("downstream", down.uri.masked(), true);
    metrics.running.set(1.0);
    status.set_running(Connected {
        upstream_uri: up.uri.masked().into(),
        downstream_uri: down.uri.masked().into(),
        upstream_cluster: up.cluster_name.clone(),
        downstream_cluster: down.cluster_name.clone(),
    });
    tracing::info!(upstream_uri = up.uri.masked(), downstream_uri = down.uri.masked(),
        upstream_cluster = %up.cluster_name, downstream_cluster = %down.cluster_name, "federation link running");
    let forwarder = Forwarder {
        spec: spec.clone(),
        status: status.clone(),
        metrics: metrics.clone(),
        depth_channel,
        up: queue.channel,
        up_status: up.conn.status().clone(),
        down: down_channel,
        down_status: down.conn.status().clone(),
        consumer: queue.consumer,
        origin: Origin {
            uri: up.uri.without_credentials().into(),
            exchange: spec.exchange.clone(),
            cluster_name: up.cluster_name.clone(),
            vhost: up.uri.vhost().into(),
        },
        policy: HopPolicy {
            max_hops: spec.upstream.max_hops,
            downstream_cluster: down.cluster_name.clone(),
            downstream_vhost: down.uri.vhost().into(),
        },
    };
    let events = Events {
        up: up_events,
        down: down_events,
    };
    forwarder.run(events, stop).await
}

async fn close(ep: &Endpoint) {
    if ep.conn.status().connected() {
        let _ = tokio::time::timeout(
            CLOSE_TIMEOUT,
            ep.conn.close(200, "setgate federation link closing".into()),
        )
        .await;
    }
}
