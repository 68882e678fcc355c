//! Why a flow attempt failed. Every message names the cluster and the object, and says what to do
//! where there is something to do; none contains a password.

use std::fmt;

/// Which side of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The cluster messages are taken from.
    Upstream,
    /// The cluster messages are published to.
    Downstream,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Upstream => "upstream",
            Side::Downstream => "downstream",
        })
    }
}

/// A failed or ended flow attempt; the flow retries after `reconnect_delay`.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// No URI of a side could be connected.
    #[error("cannot connect to {side} {cluster}: {tried}")]
    Connect {
        /// Which side.
        side: Side,
        /// The configured name of the cluster.
        cluster: String,
        /// Every URI tried (masked) with its error, in order.
        tried: String,
        /// No URI answered at all (packets dropped): nothing refused, so knocking again at once
        /// costs the brokers nothing.
        no_answer: bool,
    },
    /// A side stopped answering on an open connection: missed heartbeats, a publish never
    /// confirmed, a request never answered. What a vanished host or a dead network path looks
    /// like (no reset, no error).
    #[error("{side} {cluster} stopped answering: {what}; reconnecting (check the broker and the network path to it)")]
    Silent {
        /// Which side.
        side: Side,
        /// Configured cluster name.
        cluster: String,
        /// What went unanswered, and for how long.
        what: String,
    },
    /// The exchange does not exist on one side.
    #[error("{side} exchange \"{exchange}\" does not exist on {cluster} (vhost {vhost}); declare it there")]
    ExchangeMissing {
        /// Which side.
        side: Side,
        /// Exchange name.
        exchange: String,
        /// Configured cluster name.
        cluster: String,
        /// Virtual host.
        vhost: String,
    },
    /// A queue a flow consumes or publishes to does not exist.
    #[error("{side} queue \"{queue}\" does not exist on {cluster}; declare it there")]
    QueueMissing {
        /// Which side.
        side: Side,
        /// Queue name.
        queue: String,
        /// Configured cluster name.
        cluster: String,
    },
    /// The two exchanges route differently.
    #[error(
        "exchange \"{exchange}\" is of type {downstream_type} on downstream {downstream} but {upstream_type} on \
         upstream {upstream}; federation needs the same type on both sides"
    )]
    ExchangeType {
        /// Exchange name.
        exchange: String,
        /// Configured upstream name.
        upstream: String,
        /// Its type there.
        upstream_type: String,
        /// Configured downstream name.
        downstream: String,
        /// Its type there.
        downstream_type: String,
    },
    /// A broker refused or failed an operation.
    #[error("{what} on {side} {cluster}: {reason}")]
    Broker {
        /// What was attempted, e.g. `declaring queue "federation: x -> dc2"`.
        what: String,
        /// Which side.
        side: Side,
        /// Configured cluster name.
        cluster: String,
        /// The broker's or the client's explanation.
        reason: String,
    },
    /// The upstream cancelled the consumer (queue deleted, or node shutting down).
    #[error("upstream {cluster} cancelled the consumer of queue \"{queue}\" (queue deleted or node stopping)")]
    ConsumerCancelled {
        /// Configured upstream name.
        cluster: String,
        /// Queue name.
        queue: String,
    },
    /// A SET's broker blocked publishing (Connection.Blocked: a memory or disk alarm). To the
    /// other SETs of a routed destination that SET is down until the alarm lifts.
    #[error(
        "downstream {cluster} blocked publishing: a resource alarm (memory or disk) on its \
         broker; its messages are held or failed over until the alarm lifts (free memory or disk \
         there)"
    )]
    Blocked {
        /// Configured cluster name.
        cluster: String,
    },
    /// A message whose properties setgate cannot read, at the head of what the flow consumes:
    /// it stays upstream, and each attempt stops at it again.
    #[error(
        "a message in queue \"{queue}\" on upstream {cluster} has properties setgate cannot read \
         ({reason}); it stays in the queue and this flow stops at it: pause the link or shovel \
         (POST /api/links/NAME/pause or /api/shovels/NAME/pause), move the message aside or purge \
         the queue, then resume it"
    )]
    Unreadable {
        /// Configured upstream name.
        cluster: String,
        /// Queue name.
        queue: String,
        /// What cannot be read.
        reason: String,
    },
}

impl LinkError {
    /// The peer went silent rather than refusing: the next attempt may start at once (its
    /// connect knocks once a second, which costs a silent peer nothing) instead of after
    /// `reconnect_delay`.
    pub(crate) fn peer_silent(&self) -> bool {
        matches!(
            self,
            LinkError::Silent { .. }
                | LinkError::Connect {
                    no_answer: true,
                    ..
                }
        )
    }

    /// Wraps a lapin error with what was being done, where.
    pub(crate) fn broker(
        what: impl Into<String>,
        side: Side,
        cluster: &str,
        err: &lapin::Error,
    ) -> LinkError {
        if matches!(err.kind(), lapin::ErrorKind::MissingHeartbeatError) {
            return LinkError::Silent {
                side,
                cluster: cluster.to_string(),
                what: match what.into() {
                    w if w == "connection" => {
                        "nothing received for two heartbeat intervals".to_string()
                    }
                    w => format!("nothing received for two heartbeat intervals ({w})"),
                },
            };
        }
        LinkError::Broker {
            what: what.into(),
            side,
            cluster: cluster.to_string(),
            reason: describe(err),
        }
    }
}

/// A lapin error as one readable sentence (the broker's reply text when there is one).
pub(crate) fn describe(err: &lapin::Error) -> String {
    match err.kind() {
        lapin::ErrorKind::ProtocolError(e) => e.get_message().to_string(),
        lapin::ErrorKind::IOError(e) => format!("connection lost ({e})"),
        lapin::ErrorKind::MissingHeartbeatError => {
            "nothing received for two heartbeat intervals (heartbeats missed)".to_string()
        }
        lapin::ErrorKind::InvalidChannelState(..)
        | lapin::ErrorKind::InvalidConnectionState(..) => {
            format!("connection lost ({err})")
        }
        _ => err.to_string(),
    }
}
