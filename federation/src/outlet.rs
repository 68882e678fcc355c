//! Where a flow publishes: one *outlet* per destination cluster, each with its channel and the
//! publishes awaiting their confirms.
//!
//! A plain link or shovel has one outlet, on a connection the flow owns; losing it ends the
//! flow's attempt (`fatal`), as it always did. A destination that routes messages to SETs has
//! an outlet per cluster (the center's, then each SET's), each on its own connection, plus the
//! *hold* outlet: a channel on the upstream connection that parks messages of a SET that is down
//! in a queue on the source. A SET's outlet that goes down is local news: its unconfirmed
//! publishes are requeued upstream (and then parked, or sent to the failover SET), it reconnects
//! on its own every `reconnect_delay`, and the other SETs never wait for it.

use crate::connect::{connect, Endpoint};
use crate::error::{LinkError, Side};
use crate::plan::Target;
use crate::status::SetStats;
use crate::topology::check_target;
use crate::tracker::Seq;
use crate::uri::AmqpUri;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};
use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Confirmation, ConnectionStatus, Event, PublisherConfirm};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use sync_wrapper::SyncWrapper;

/// How long closing an outlet's own connection may take (a stopped broker never answers).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// A publish's confirm with its sequence number and publish time.
pub(crate) type Confirmed = (Seq, Instant, lapin::Result<Confirmation>);

/// Publishes awaiting their confirm, oldest first. Only the oldest is awaited: the tracker acks
/// nothing past an unconfirmed publish anyway, and the broker confirms in order in practice,
/// so this costs no latency and saves a task and an allocation per message.
#[derive(Default)]
pub(crate) struct Pending(VecDeque<(Seq, Instant, PublisherConfirm)>);

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn push(&mut self, seq: Seq, start: Instant, confirm: PublisherConfirm) {
        self.0.push_back((seq, start, confirm));
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// When the oldest publish still waiting for its confirm went out.
    pub fn oldest(&self) -> Option<Instant> {
        self.0.front().map(|p| p.1)
    }

    /// The oldest publish's confirm, if it has come. It is removed only once resolved.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Confirmed>> {
        let Some(front) = self.0.front_mut() else {
            return Poll::Ready(None);
        };
        let result = std::task::ready!(Pin::new(&mut front.2).poll(cx));
        let (seq, start, _) = self.0.pop_front().expect("front exists");
        Poll::Ready(Some((seq, start, result)))
    }

    /// Gives up on every publish still waiting (their outlet is gone): their sequence numbers.
    fn abandon(&mut self) -> Vec<Seq> {
        self.0.drain(..).map(|(seq, _, _)| seq).collect()
    }
}

/// An open outlet.
pub(crate) struct Up {
    pub channel: Channel,
    pub status: ConnectionStatus,
    /// The outlet's own connection; `None` when the flow owns it (a plain destination, the
    /// hold outlet on the upstream connection).
    endpoint: Option<Endpoint>,
    /// Its connection's events; `None` when the flow listens to them itself.
    events: Option<SyncWrapper<BoxStream<'static, Event>>>,
}

/// The forwarder is shared by reference across awaits, so it must be `Sync`; the boxed
/// stream and future are only ever used through `&mut`, which `SyncWrapper` makes explicit.
enum State {
    Up(Box<Up>),
    Down(Pin<Box<tokio::time::Sleep>>),
    Connecting(SyncWrapper<BoxFuture<'static, Result<Up, LinkError>>>),
}

/// How an outlet of a routed destination (re)connects.
#[derive(Clone)]
pub(crate) struct Dial {
    pub uris: Vec<AmqpUri>,
    pub conn_name: String,
    pub target: Target,
    pub confirm: bool,
    pub reconnect_delay: Duration,
}

/// One destination cluster of a flow.
pub(crate) struct Outlet {
    /// The configured cluster name (a SET's, `default`, the downstream's, or `hold`).
    pub name: String,
    /// Losing it ends the flow's attempt.
    pub fatal: bool,
    state: State,
    pub confirms: Pending,
    /// The SET's counters in the status (routed destinations).
    pub stats: Option<Arc<SetStats>>,
    /// How to reconnect (outlets with their own connection).
    dial: Option<Dial>,
    /// The broker's `cluster_name` and the URI (without credentials) in use.
    pub cluster_name: String,
    pub uri: String,
}

/// Something that happened to an outlet.
// A confirm is the common event and lives for one match; boxing it would cost an allocation per
// message on the hot path.
#[allow(clippy::large_enum_variant)]
pub(crate) enum OutletEvent {
    Confirm(usize, Confirmed),
    /// Its connection failed.
    Lost(usize, LinkError),
    /// It (re)connected.
    Connected(usize),
    /// A connection attempt failed; it tries again after `reconnect_delay`.
    ConnectFailed(usize, LinkError),
}

impl Outlet {
    /// An outlet on a channel the flow opened, on a connection the flow owns and watches.
    pub fn fixed(name: &str, channel: Channel, status: ConnectionStatus) -> Outlet {
        Outlet {
            name: name.to_string(),
            fatal: true,
            state: State::Up(Box::new(Up {
                channel,
                status,
                endpoint: None,
                events: None,
            })),
            confirms: Pending::default(),
            stats: None,
            dial: None,
            cluster_name: name.to_string(),
            uri: String::new(),
        }
    }

    /// An outlet with its own connection, connecting now.
    pub fn dialed(name: &str, dial: Dial, stats: Arc<SetStats>) -> Outlet {
        let state = State::Connecting(SyncWrapper::new(
            open(name.to_string(), dial.clone()).boxed(),
        ));
        Outlet {
            name: name.to_string(),
            fatal: false,
            state,
            confirms: Pending::default(),
            stats: Some(stats),
            dial: Some(dial),
            cluster_name: name.to_string(),
            uri: String::new(),
        }
    }

    pub fn is_up(&self) -> bool {
        matches!(self.state, State::Up(_))
    }

    pub fn is_connecting(&self) -> bool {
        matches!(self.state, State::Connecting(_))
    }

    /// The open channel, if up.
    pub fn up(&self) -> Option<&Up> {
        match &self.state {
            State::Up(u) => Some(u),
            _ => None,
        }
    }

    /// Takes the outlet down after `err`: closes its connection in the background, gives up on
    /// its unconfirmed publishes (returned, to be requeued upstream) and reconnects after
    /// `reconnect_delay`.
    pub fn go_down(&mut self, err: &LinkError) -> Vec<Seq> {
        let delay = self
            .dial
            .as_ref()
            .map_or(Duration::from_secs(5), |d| d.reconnect_delay);
        // A silent peer is knocked on again at once, as a flow does (the connect knocks).
        let delay = if err.peer_silent() {
            Duration::ZERO
        } else {
            delay
        };
        let old = std::mem::replace(
            &mut self.state,
            State::Down(Box::pin(tokio::time::sleep(delay))),
        );
        if let State::Up(up) = old {
            if let Some(ep) = up.endpoint {
                tokio::spawn(close(ep));
            }
        }
        if let Some(s) = &self.stats {
            s.set_down(err.to_string());
        }
        tracing::warn!(cluster = %self.name, error = %err, retry_in = ?delay, "destination down; its messages are held or failed over");
        self.confirms.abandon()
    }

    /// Closes the outlet's own connection, if it has one.
    pub async fn close(self) {
        if let State::Up(up) = self.state {
            if let Some(ep) = up.endpoint {
                close(ep).await;
            }
        }
    }

    fn poll_event(&mut self, i: usize, cx: &mut Context<'_>) -> Poll<OutletEvent> {
        loop {
            match &mut self.state {
                State::Down(sleep) => {
                    std::task::ready!(sleep.as_mut().poll(cx));
                    let dial = self.dial.clone().expect("only dialed outlets go down");
                    self.state =
                        State::Connecting(SyncWrapper::new(open(self.name.clone(), dial).boxed()));
                }
                State::Connecting(fut) => {
                    let result = std::task::ready!(fut.get_mut().as_mut().poll(cx));
                    return Poll::Ready(match result {
                        Ok(up) => {
                            if let Some(ep) = &up.endpoint {
                                self.cluster_name = ep.cluster_name.clone();
                                self.uri = ep.uri.without_credentials().to_string();
                            }
                            self.state = State::Up(Box::new(up));
                            if let Some(s) = &self.stats {
                                s.set_up();
                            }
                            OutletEvent::Connected(i)
                        }
                        Err(e) => {
                            let delay = self
                                .dial
                                .as_ref()
                                .map_or(Duration::from_secs(5), |d| d.reconnect_delay);
                            let delay = if e.peer_silent() {
                                Duration::ZERO
                            } else {
                                delay
                            };
                            self.state = State::Down(Box::pin(tokio::time::sleep(delay)));
                            if let Some(s) = &self.stats {
                                s.set_down(e.to_string());
                            }
                            OutletEvent::ConnectFailed(i, e)
                        }
                    });
                }
                State::Up(up) => {
                    if let Some(events) = &mut up.events {
                        while let Poll::Ready(ev) = events.get_mut().poll_next_unpin(cx) {
                            match ev {
                                Some(Event::Error(e)) if !up.status.connected() => {
                                    return Poll::Ready(OutletEvent::Lost(
                                        i,
                                        LinkError::broker(
                                            "connection",
                                            Side::Downstream,
                                            &self.name,
                                            &e,
                                        ),
                                    ));
                                }
                                Some(_) => {}
                                None => {
                                    return Poll::Ready(OutletEvent::Lost(
                                        i,
                                        LinkError::Broker {
                                            what: "connection".into(),
                                            side: Side::Downstream,
                                            cluster: self.name.clone(),
                                            reason: "closed".into(),
                                        },
                                    ))
                                }
                            }
                        }
                    }
                    return match self.confirms.poll_next(cx) {
                        Poll::Ready(Some(c)) => Poll::Ready(OutletEvent::Confirm(i, c)),
                        _ => Poll::Pending,
                    };
                }
            }
        }
    }
}

/// Connects an outlet: its URIs in order, the target checked, a channel (in confirm mode).
async fn open(cluster: String, dial: Dial) -> Result<Up, LinkError> {
    let ep = connect(Side::Downstream, &cluster, &dial.uris, &dial.conn_name).await?;
    let events = ep.conn.events_listener().boxed();
    let ready = async {
        check_target(&ep.conn, &cluster, ep.uri.vhost(), &dial.target).await?;
        let channel =
            ep.conn.create_channel().await.map_err(|e| {
                LinkError::broker("opening a channel", Side::Downstream, &cluster, &e)
            })?;
        if dial.confirm {
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| {
                    LinkError::broker(
                        "enabling publisher confirms",
                        Side::Downstream,
                        &cluster,
                        &e,
                    )
                })?;
        }
        Ok::<_, LinkError>(channel)
    };
    match ready.await {
        Ok(channel) => {
            tracing::info!(cluster = %cluster, uri = ep.uri.masked(), "destination up");
            Ok(Up {
                channel,
                status: ep.conn.status().clone(),
                endpoint: Some(ep),
                events: Some(SyncWrapper::new(events)),
            })
        }
        Err(e) => {
            close(ep).await;
            Err(e)
        }
    }
}

async fn close(ep: Endpoint) {
    if ep.conn.status().connected() {
        let _ = tokio::time::timeout(
            CLOSE_TIMEOUT,
            ep.conn.close(200, "setgate flow closing".into()),
        )
        .await;
    }
}

/// The outlets of a flow.
#[derive(Default)]
pub(crate) struct Outlets(pub Vec<Outlet>);

impl Outlets {
    /// The next thing that happened to any outlet. Cancel-safe: all state lives in the outlets.
    pub async fn next(&mut self) -> OutletEvent {
        std::future::poll_fn(|cx| {
            for (i, o) in self.0.iter_mut().enumerate() {
                if let Poll::Ready(ev) = o.poll_event(i, cx) {
                    return Poll::Ready(ev);
                }
            }
            Poll::Pending
        })
        .await
    }

    /// An event if one is ready now.
    pub fn next_now(&mut self) -> Option<OutletEvent> {
        self.next().now_or_never()
    }

    /// No publish awaits a confirm.
    pub fn settled(&self) -> bool {
        self.0.iter().all(|o| o.confirms.is_empty())
    }

    /// Publishes awaiting confirms, over all outlets.
    pub fn unconfirmed(&self) -> usize {
        self.0.iter().map(|o| o.confirms.len()).sum()
    }

    /// The oldest unconfirmed publish over all outlets: (outlet, when).
    pub fn oldest(&self) -> Option<(usize, Instant)> {
        self.0
            .iter()
            .enumerate()
            .filter_map(|(i, o)| o.confirms.oldest().map(|t| (i, t)))
            .min_by_key(|(_, t)| *t)
    }

    /// Some outlet is still making its first connection.
    pub fn connecting(&self) -> bool {
        self.0.iter().any(Outlet::is_connecting)
    }

    pub async fn close(self) {
        futures_util::future::join_all(self.0.into_iter().map(Outlet::close)).await;
    }
}
