//! One flow's life: connect (the destination, then the source, each trying its URIs in
//! order), set up, forward; on any failure close both connections, wait `reconnect_delay`,
//! start over. Links and shovels run the same flow; only what `plan` put in the spec differs.
//!
//! Closing the upstream connection is what makes the upstream requeue every delivery that was
//! not acknowledged, so an attempt that ends for any reason loses nothing.

use crate::config::AckMode;
use crate::connect::{connect, Endpoint, CLOSE_TIMEOUT};
use crate::error::{LinkError, Side};
use crate::forward::{Ended, Events, Forwarder};
use crate::hops::{received_from_elements, HopPolicy, Origin};
use crate::metrics::FlowMetrics;
use crate::outlet::{open_wire, Dial, Outlet, OutletEvent, Outlets, WireUse};
use crate::plan::{hold_queue, Downstream, FlowSpec, Headers};
use crate::shovel::DeleteAfter;
use crate::shovelled::Shovelled;
use crate::status::{Connected, FlowStatus};
use crate::stop::stopped;
use crate::topology::{
    check_exchanges, check_source, check_target, consume_upstream, hold_queue_arguments,
    ExchangeSide,
};
use futures_util::StreamExt;
use lapin::options::QueueDeclareOptions;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

/// How long a routed flow waits for its clusters' first connections before it consumes:
/// messages for a cluster not yet connected would be parked, which costs a detour.
const FIRST_CONNECT_WAIT: Duration = Duration::from_secs(3);

/// How a flow ends after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnError {
    /// Retry after `reconnect_delay` (links, shovels).
    Retry,
    /// Stop (the one-shot `setgate shovel`).
    GiveUp,
}

/// A running flow: its status and how to stop it.
#[derive(Debug)]
pub(crate) struct FlowHandle {
    pub status: Arc<FlowStatus>,
    /// `Some(grace)` asks the flow to stop, draining for at most `grace`.
    stop: watch::Sender<Option<Duration>>,
    task: JoinHandle<Result<(), LinkError>>,
}

impl FlowHandle {
    /// Spawns the flow on a data-path runtime of its own thread (see `setgate_shards`).
    pub fn spawn(spec: FlowSpec, on_error: OnError) -> FlowHandle {
        let sets: Vec<String> = match &spec.downstream {
            Downstream::Sets { routes, .. } => {
                routes.clusters.iter().map(|c| c.name.clone()).collect()
            }
            Downstream::Cluster { .. } => Vec::new(),
        };
        let status = Arc::new(FlowStatus::with_sets(
            &spec.upstream.name,
            &spec.exchange,
            &spec.queue_name(),
            &sets,
        ));
        let (stop, stop_rx) = watch::channel(None);
        let span = tracing::info_span!("flow", link = %spec.link, upstream = %spec.upstream.name,
            exchange = %spec.exchange, downstream = %spec.downstream_name());
        let task = setgate_shards::spawn(
            run(Arc::new(spec), status.clone(), stop_rx, on_error).instrument(span),
        );
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

    /// Waits for the flow to end by itself (`delete_after`, or an error with
    /// [`OnError::GiveUp`]); its last error, if it gave up.
    pub async fn finished(self) -> Result<(), LinkError> {
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(LinkError::Broker {
                what: "running the flow".into(),
                side: Side::Upstream,
                cluster: self.status.upstream.clone(),
                reason: e.to_string(),
            }),
        }
    }
}

async fn run(
    spec: Arc<FlowSpec>,
    status: Arc<FlowStatus>,
    mut stop: watch::Receiver<Option<Duration>>,
    on_error: OnError,
) -> Result<(), LinkError> {
    let metrics = FlowMetrics::new(&spec.link, &spec.upstream.name, &spec.exchange);
    let mut compare_types = true;
    let mut outcome = Ok(());
    loop {
        let result = attempt(&spec, &status, &metrics, &mut stop, &mut compare_types).await;
        metrics.running.set(0.0);
        if stop.borrow().is_some() {
            break;
        }
        let err = match result {
            Ok(Ended::Stopped) => break,
            Ok(Ended::Completed) => {
                status.set_completed();
                tracing::info!(
                    moved = status.counters.forwarded.load(Relaxed),
                    "delete_after reached; the flow is complete"
                );
                return Ok(());
            }
            Err(e) => e,
        };
        if matches!(
            err,
            LinkError::ExchangeMissing { .. } | LinkError::ExchangeType { .. }
        ) {
            compare_types = true;
        }
        let delay = retry_delay(&spec, &err);
        if on_error == OnError::GiveUp {
            status.set_reconnecting(err.to_string(), SystemTime::now());
            outcome = Err(err);
            break;
        }
        tracing::warn!(error = %err, retry_in = ?delay, "flow attempt failed; retrying");
        status.set_reconnecting(err.to_string(), SystemTime::now() + delay);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stopped(&mut stop) => break,
        }
        status.counters.reconnects.fetch_add(1, Relaxed);
        metrics.reconnects.increment(1);
    }
    status.set_stopped();
    tracing::info!("flow stopped");
    outcome
}

/// How long to wait before the next attempt after `err`.
///
/// A peer that went silent is knocked on again at once: the connect sends one SYN a second
/// until it answers, which a vanished host does not feel, and the flow resumes within a second
/// of the path coming back instead of up to `reconnect_delay` later.
fn retry_delay(spec: &FlowSpec, err: &LinkError) -> Duration {
    if err.peer_silent() {
        Duration::ZERO
    } else {
        spec.upstream.reconnect_delay
    }
}

/// One attempt: connect both sides, set up, forward until an error, a stop or the end.
async fn attempt(
    spec: &Arc<FlowSpec>,
    status: &Arc<FlowStatus>,
    metrics: &FlowMetrics,
    stop: &mut watch::Receiver<Option<Duration>>,
    compare_types: &mut bool,
) -> Result<Ended, LinkError> {
    let name = format!(
        "setgate {}: {} -> {}",
        spec.link,
        spec.exchange,
        spec.downstream_name()
    );
    let connecting = async {
        let down = match &spec.downstream {
            Downstream::Cluster {
                name: cluster,
                uris,
            } => Some(connect(Side::Downstream, cluster, uris, &name).await?),
            Downstream::Sets { .. } => None,
        };
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
                if let Some(down) = &down {
                    close(down).await;
                }
                Err(e)
            }
        }
    };
    let (up, down) = tokio::select! {
        r = connecting => r?,
        _ = stopped(stop) => return Ok(Ended::Stopped),
    };
    let result = connected(
        spec,
        status,
        metrics,
        stop,
        &up,
        down.as_ref(),
        compare_types,
        &name,
    )
    .await;
    if let Err(e) = &result {
        // Say so before closing: closing a side that went silent waits out CLOSE_TIMEOUT.
        metrics.running.set(0.0);
        let next = SystemTime::now() + retry_delay(spec, e);
        status.set_reconnecting(e.to_string(), next);
    }
    metrics.connected_uri("upstream", up.uri.masked(), false);
    // Upstream first: from here on it requeues whatever was not acknowledged.
    close(&up).await;
    if let Some(down) = &down {
        metrics.connected_uri("downstream", down.uri.masked(), false);
        close(down).await;
    }
    result
}

/// Checks what the flow needs on both sides, opens its destination(s) and its consumer.
#[allow(clippy::too_many_arguments)]
async fn connected(
    spec: &Arc<FlowSpec>,
    status: &Arc<FlowStatus>,
    metrics: &FlowMetrics,
    stop: &mut watch::Receiver<Option<Duration>>,
    up: &Endpoint,
    down: Option<&Endpoint>,
    compare_types: &mut bool,
    conn_name: &str,
) -> Result<Ended, LinkError> {
    // Listen before anything can fail, so a connection error is never missed.
    let up_events = up.conn.events_listener().boxed();
    let down_events = down.map(|d| (d.conn.events_listener().boxed(), d.conn.status().clone()));
    let confirm = spec.upstream.ack_mode == AckMode::OnConfirm;
    let setup = async {
        let outlets = match down {
            Some(down) => {
                check(spec, up, down, compare_types).await?;
                let wire = open_wire(
                    Side::Downstream,
                    &down_label(spec),
                    &down.uri,
                    conn_name,
                    WireUse::Publish { confirm },
                )
                .await?;
                let mut o = Outlet::fixed(spec.downstream_name(), Side::Downstream, wire);
                o.cluster_name = down.cluster_name.clone();
                o.uri = down.uri.without_credentials().to_string();
                Outlets(vec![o])
            }
            None => {
                check_source(&up.conn, spec, up.uri.vhost()).await?;
                routed_outlets(spec, status, up, conn_name, confirm).await?
            }
        };
        let limit = delete_after_limit(spec, status);
        let mut inlet = open_wire(
            Side::Upstream,
            &spec.upstream.name,
            &up.uri,
            conn_name,
            WireUse::Consume,
        )
        .await?;
        let queue = consume_upstream(&up.conn, &mut inlet, spec, |depth| {
            let remaining = limit(depth);
            let prefetch = u64::from(spec.upstream.prefetch_count);
            // validate() keeps prefetch_count within 1..=65535; a limit lowers it so that no
            // more is delivered than may be moved.
            let p = remaining.map_or(prefetch, |r| r.clamp(1, prefetch));
            (u16::try_from(p).unwrap_or(u16::MAX), remaining)
        })
        .await?;
        Ok::<_, LinkError>((outlets, queue, inlet))
    };
    let (mut outlets, queue, mut inlet) = tokio::select! {
        r = setup => r?,
        _ = stopped(stop) => return Ok(Ended::Stopped),
    };
    if down.is_none() {
        // The consumer is on: its connection's heartbeats go on meanwhile.
        let _ = inlet.alive_during(first_connections(&mut outlets)).await;
    }
    status
        .counters
        .queue_depth
        .store(u64::from(queue.depth), Relaxed);
    metrics.queue_depth.set(f64::from(queue.depth));
    metrics.connected_uri("upstream", up.uri.masked(), true);
    if let Some(down) = down {
        metrics.connected_uri("downstream", down.uri.masked(), true);
    }
    metrics.running.set(1.0);
    status.set_running(Connected {
        upstream_uri: up.uri.masked().into(),
        downstream_uri: down.map_or_else(|| "sets".into(), |d| d.uri.masked().into()),
        upstream_cluster: up.cluster_name.clone(),
        downstream_cluster: down.map_or_else(|| "sets".into(), |d| d.cluster_name.clone()),
    });
    tracing::info!(upstream_uri = up.uri.masked(), downstream = spec.downstream_name(),
        upstream_cluster = %up.cluster_name, "flow running");
    let shovelled = matches!(spec.headers, Headers::Shovel { forward: true })
        .then(|| Shovelled::new(spec, up.uri.without_credentials(), up.uri.vhost()));
    let origin = Origin {
        uri: up.uri.without_credentials().into(),
        exchange: spec.exchange.clone(),
        cluster_name: up.cluster_name.clone(),
        vhost: up.uri.vhost().into(),
    };
    let forwarder = Forwarder {
        spec: spec.clone(),
        status: status.clone(),
        metrics: metrics.clone(),
        depth_channel: queue.channel,
        up_status: up.conn.status().clone(),
        outlets,
        received_from: match spec.headers {
            Headers::Federation => received_from_elements(&origin),
            _ => Default::default(),
        },
        scratch: Vec::new(),
        policy: HopPolicy {
            max_hops: spec.upstream.max_hops,
            downstream_cluster: down.map_or_else(String::new, |d| d.cluster_name.clone()),
            downstream_vhost: down.map_or_else(String::new, |d| d.uri.vhost().into()),
        },
        shovelled,
        limit: queue.remaining,
    };
    let events = Events {
        up: up_events,
        down: down_events,
    };
    forwarder.run(inlet, events, stop).await
}

fn down_label(spec: &FlowSpec) -> String {
    spec.downstream_name().to_string()
}

/// The checks before forwarding to one cluster: federation compares the exchange on both
/// sides; shovels and hold releases check that their source and their target exist.
async fn check(
    spec: &FlowSpec,
    up: &Endpoint,
    down: &Endpoint,
    compare_types: &mut bool,
) -> Result<(), LinkError> {
    if spec.compares_exchanges() {
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
                cluster: spec.downstream_name(),
                vhost: down.uri.vhost(),
                conn: &down.conn,
            },
            *compare_types,
        )
        .await?;
        *compare_types = false;
        return Ok(());
    }
    check_source(&up.conn, spec, up.uri.vhost()).await?;
    check_target(
        &down.conn,
        spec.downstream_name(),
        down.uri.vhost(),
        &spec.target,
    )
    .await
}

/// A routed destination's outlets: one per cluster (connecting now, each on its own), then
/// the hold outlet, a publishing connection to the upstream, with every hold queue declared.
async fn routed_outlets(
    spec: &FlowSpec,
    status: &FlowStatus,
    up: &Endpoint,
    conn_name: &str,
    confirm: bool,
) -> Result<Outlets, LinkError> {
    let Downstream::Sets {
        routes,
        hold_prefix,
    } = &spec.downstream
    else {
        unreachable!("called for routed destinations");
    };
    let mut outlets: Vec<Outlet> = routes
        .clusters
        .iter()
        .zip(&status.sets)
        .map(|(c, (_, stats))| {
            let dial = Dial {
                uris: c.uris.clone(),
                conn_name: conn_name.to_string(),
                target: spec.target.clone(),
                confirm,
                reconnect_delay: spec.upstream.reconnect_delay,
            };
            Outlet::dialed(&c.name, dial, stats.clone())
        })
        .collect();
    let cluster = spec.upstream.name.as_str();
    let declares = up
        .conn
        .create_channel()
        .await
        .map_err(|e| LinkError::broker("opening a channel", Side::Upstream, cluster, &e))?;
    for c in &routes.clusters {
        let queue = hold_queue(hold_prefix, &c.name);
        declares
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::durable(),
                hold_queue_arguments(&spec.upstream, false),
            )
            .await
            .map_err(|e| {
                LinkError::broker(
                    format!("declaring hold queue \"{queue}\""),
                    Side::Upstream,
                    cluster,
                    &e,
                )
            })?;
    }
    let _ = declares.close(200, "hold queues declared".into()).await;
    let hold = open_wire(
        Side::Upstream,
        cluster,
        &up.uri,
        conn_name,
        WireUse::Publish { confirm },
    )
    .await?;
    outlets.push(Outlet::fixed("hold", Side::Upstream, hold));
    Ok(Outlets(outlets))
}

/// Waits (a little) for a routed flow's clusters to connect for the first time.
async fn first_connections(outlets: &mut Outlets) {
    let wait = async {
        while outlets.connecting() {
            match outlets.next().await {
                OutletEvent::ConnectFailed(i, e) => {
                    tracing::warn!(cluster = %outlets.0[i].name, error = %e, "destination down; its messages are held or failed over until it is back");
                }
                OutletEvent::Connected(_) => {}
                // Nothing is published yet: no confirms, and a loss is seen again later.
                OutletEvent::Confirm(..) | OutletEvent::Lost(..) => {}
            }
        }
    };
    let _ = tokio::time::timeout(FIRST_CONNECT_WAIT, wait).await;
}

/// `delete_after`: a function of the queue depth at this attempt's start giving how many
/// messages it may still move. The limit is fixed at the flow's first attempt (the depth
/// then, for `queue-length`) and kept across reconnects.
fn delete_after_limit<'a>(
    spec: &'a FlowSpec,
    status: &'a FlowStatus,
) -> impl Fn(u32) -> Option<u64> + 'a {
    move |depth| {
        let c = &status.counters;
        let limit = match spec.delete_after {
            DeleteAfter::Never => return None,
            DeleteAfter::QueueLength => u64::from(depth),
            DeleteAfter::Messages(n) => n,
        };
        let _ = c.limit.compare_exchange(u64::MAX, limit, Relaxed, Relaxed);
        Some(
            c.limit
                .load(Relaxed)
                .saturating_sub(c.forwarded.load(Relaxed)),
        )
    }
}

async fn close(ep: &Endpoint) {
    if ep.conn.status().connected() {
        let _ = tokio::time::timeout(
            CLOSE_TIMEOUT,
            ep.conn.close(200, "setgate flow closing".into()),
        )
        .await;
    }
}
