//! `setgate shovel --from URI --queue Q --to URI`: the common chore of replaying a dead-letter
//! queue, as one command. It runs a shovel with `delete_after = "queue-length"` on the same
//! flow engine and gives up at the first error instead of retrying, so a script learns at once
//! that it could not.

use crate::config::AckMode;
use crate::flow::{FlowHandle, OnError};
use crate::plan::{plans, MessagingConfig, Source};
use crate::shovel::{DeleteAfter, DestinationConfig, ShovelConfig, SourceConfig};
use crate::uri::AmqpUri;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// What the one-shot command moves.
#[derive(Debug, Clone)]
pub struct OneShot {
    /// The source broker.
    pub from: String,
    /// The queue to empty (what is in it when the command starts).
    pub queue: String,
    /// The destination broker.
    pub to: String,
    /// The exchange to publish to; without it, the queue of the same name on `to`.
    pub exchange: Option<String>,
    /// Replaces each message's routing key.
    pub routing_key: Option<String>,
}

impl OneShot {
    /// The shovel it runs.
    pub fn config(&self) -> ShovelConfig {
        let destination = match &self.exchange {
            Some(x) => DestinationConfig {
                uris: vec![AmqpUri::new(&self.to)],
                exchange: Some(x.clone()),
                routing_key: self.routing_key.clone(),
                ..Default::default()
            },
            None => DestinationConfig {
                uris: vec![AmqpUri::new(&self.to)],
                queue: Some(self.queue.clone()),
                ..Default::default()
            },
        };
        ShovelConfig {
            name: format!("replay {}", self.queue),
            source: SourceConfig {
                uris: vec![AmqpUri::new(&self.from)],
                queue: Some(self.queue.clone()),
                ..Default::default()
            },
            destination,
            ack_mode: AckMode::OnConfirm,
            prefetch_count: 1000,
            reconnect_delay: Duration::from_secs(1),
            delete_after: DeleteAfter::QueueLength,
            add_forward_headers: false,
        }
    }

    /// Problems with the arguments, each naming the flag.
    pub fn validate(&self) -> Vec<String> {
        let mut errs = Vec::new();
        for (flag, uri) in [("--from", &self.from), ("--to", &self.to)] {
            if let Some(p) = AmqpUri::new(uri).problem() {
                errs.push(format!(
                    "{flag}: {} {p}; write amqp://user:pass@host:port/vhost",
                    AmqpUri::new(uri).masked()
                ));
            }
        }
        if self.queue.is_empty() {
            errs.push("--queue: is empty; name the queue to move".into());
        }
        if self.routing_key.is_some() && self.exchange.is_none() {
            errs.push(
                "--routing-key: needs --exchange (a queue destination has no routing key)".into(),
            );
        }
        errs
    }

    /// Moves the messages; how many, or why it stopped (with how many it had moved).
    pub async fn run(&self) -> Result<u64, (u64, String)> {
        let cfg = MessagingConfig {
            shovels: vec![self.config()],
            ..Default::default()
        };
        let mut flow = plans(&cfg)
            .into_iter()
            .flat_map(|p| p.flows)
            .next()
            .expect("a plain shovel has one flow");
        // A typo in --queue must fail, not create an empty queue and move nothing.
        if let Source::Existing { declare, .. } = &mut flow.source {
            *declare = false;
        }
        let handle = FlowHandle::spawn(flow, OnError::GiveUp);
        let status = handle.status.clone();
        let result = handle.finished().await;
        let moved = status.counters.forwarded.load(Relaxed);
        match result {
            Ok(()) => Ok(moved),
            Err(e) => Err((moved, e.to_string())),
        }
    }
}
