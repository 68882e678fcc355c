//! The stop signal of a flow: a `watch` of `Option<Duration>` that becomes `Some(grace)` when the
//! flow should stop. A leaf, so the flow loop and the forwarder both wait on it without importing
//! each other.

use std::time::Duration;
use tokio::sync::watch;

/// Resolves once a stop was requested (or the handle is gone). Cancel-safe.
pub(crate) async fn stopped(stop: &mut watch::Receiver<Option<Duration>>) {
    loop {
        if stop.borrow_and_update().is_some() {
            return;
        }
        if stop.changed().await.is_err() {
            return;
        }
    }
}
