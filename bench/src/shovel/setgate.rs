//! setgate's shovels as the benchmark runs them: the source queue to a queue, to an exchange of
//! one cluster, or SET-routed over two SETs' clusters by the `x-user-id` header.

use setgate_testkit::config::{self, Config, Pool, Routing, Source};
use setgate_testkit::fed::wait_shovel_state;
use setgate_testkit::setgate::SetgateOptions;
use setgate_testkit::{Node, Setgate};
use std::path::Path;

/// Where a setgate shovel publishes.
#[derive(Debug, Clone, Copy)]
pub enum Destination {
    /// The queue, on set-a's node.
    Queue,
    /// The exchange, on set-a's node.
    Exchange,
    /// The exchange of the SET each message's `x-user-id` routes to.
    Sets,
}

/// The brokers and names a shovel is made of.
pub struct Shovel<'a> {
    /// The source node (the center of `routed`).
    pub src: &'a Node,
    pub src_queue: &'a str,
    /// The destination node; set-a's cluster when routed.
    pub set_a: &'a Node,
    pub set_b: &'a Node,
    /// The destination queue of [`Destination::Queue`].
    pub queue: &'a str,
    /// The destination exchange of the others.
    pub exchange: &'a str,
    pub prefetch: u32,
    /// `add_forward_headers`.
    pub forward_headers: bool,
}

impl Shovel<'_> {
    /// The config of a setgate running this shovel, named `bench`, to `dest`.
    pub fn config(&self, dest: Destination) -> Config {
        let a = [self.set_a.amqp_uri()];
        let destination = match dest {
            Destination::Queue => config::Destination::queue(&a, self.queue),
            Destination::Exchange => config::Destination::exchange(&a, self.exchange),
            Destination::Sets => {
                config::Destination::sets("header:x-user-id").exchange_name(self.exchange)
            }
        };
        let shovel = config::Shovel::new(
            "bench",
            Source::queue(&[self.src.amqp_uri()], self.src_queue),
            destination,
        )
        .ack_mode("on-confirm")
        .prefetch_count(self.prefetch)
        .add_forward_headers(self.forward_headers);
        let cfg = Config::new().shovel(shovel);
        match dest {
            Destination::Sets => self.sets(cfg),
            _ => cfg,
        }
    }

    /// The pools and `[routing]` of two SETs (each the other's failover) with their messaging
    /// URIs, the source's cluster as the center.
    fn sets(&self, cfg: Config) -> Config {
        let pool = |name: &str, node: &Node| Pool::new(name).server("n1", node.amqp_addr());
        cfg.pool(pool("center", self.src))
            .pool(pool("set-a", self.set_a))
            .pool(pool("set-b", self.set_b))
            .routing(
                Routing::new("center")
                    .default_uris(&[self.src.amqp_uri()])
                    .set("set-a", "set-a", "set-b")
                    .set("set-b", "set-b", "set-a")
                    .uris("set-a", &[self.set_a.amqp_uri()])
                    .uris("set-b", &[self.set_b.amqp_uri()]),
            )
    }

    /// Starts setgate with the shovel; waits until `/api/shovels` says it runs.
    pub async fn start(&self, bin: &Path, dest: Destination) -> anyhow::Result<Setgate> {
        let quiet = SetgateOptions {
            quiet: true,
            ..Default::default()
        };
        let sg = Setgate::start_with(bin, &self.config(dest), quiet).await?;
        wait_shovel_state(&sg, "bench", "running").await?;
        Ok(sg)
    }
}
