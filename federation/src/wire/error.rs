//! How a wire fails.

/// Why a wire failed. The flow words it as a [`crate::error::LinkError`] naming the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WireError {
    /// The socket failed or closed.
    Lost(String),
    /// The broker closed the connection or the channel: its reply text.
    Closed(String),
    /// Nothing was read for two heartbeat intervals.
    Silent,
    /// The broker sent what a publishing client cannot take.
    Protocol(String),
    /// The broker cancelled the wire's consumer (its queue was deleted, or its node stopping).
    Cancelled,
    /// The broker blocked publishing (Connection.Blocked: a resource alarm) and stopped reading
    /// what was being written to it. Only a SET's outlet takes that as its end: see
    /// [`crate::outlet::Outlets::flush`].
    Blocked,
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Lost(e) => write!(f, "connection lost ({e})"),
            WireError::Closed(text) => f.write_str(text),
            WireError::Silent => f.write_str("nothing received for two heartbeat intervals"),
            WireError::Protocol(e) => write!(f, "protocol error: {e}"),
            WireError::Cancelled => f.write_str("the broker cancelled the consumer"),
            WireError::Blocked => f.write_str("the broker blocked publishing (a resource alarm)"),
        }
    }
}
