//! setgate's shovels as the benchmark runs them: the source queue to a queue, to an exchange of
//! one cluster, or SET-routed over two SETs' clusters by the `x-user-id` header.

use setgate_testkit::config::Config;
use setgate_testkit::setgate::SetgateOptions;
use setgate_testkit::{wait_until, Node, Setgate};
use std::path::Path;
use std::time::Duration;

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
    pub src: &'a Node,
    pub src_queue: &'a str,
    pub set_a: &'a Node,
    pub set_b: &'a Node,
    pub queue: &'a str,
    pub exchange: &'a str,
    pub prefetch: u32,
}

impl Shovel<'_> {
    /// The config of a setgate running this shovel, named `bench`, to `dest`.
    pub fn config(&self, dest: Destination) -> Config {
        let q = |s: &str| format!("{s:?}");
        let destination = match dest {
            Destination::Queue => format!(
                "{{ uris = [{}], queue = {} }}",
                q(&self.set_a.amqp_uri()),
                q(self.queue)
            ),
            Destination::Exchange => format!(
                "{{ uris = [{}], exchange = {} }}",
                q(&self.set_a.amqp_uri()),
                q(self.exchange)
            ),
            Destination::Sets => format!(
                "{{ route = \"sets\", key = \"header:x-user-id\", exchange = {} }}",
                q(self.exchange)
            ),
        };
        let mut toml = format!(
            "[[shovel]]\nname = \"bench\"\nsource = {{ uris = [{}], queue = {} }}\ndestination = {destination}\nack_mode = \"on-confirm\"\nprefetch_count = {}\nreconnect_delay = \"1s\"\n",
            q(&self.src.amqp_uri()), q(self.src_queue), self.prefetch
        );
        if let Destination::Sets = dest {
            toml = format!(
                "[routing]\ndefault = \"center\"\ndefault_uris = [{}]\nsets = [\n  {{ name = \"set-a\", pool = \"set-a\", failover = \"set-b\", uris = [{}] }},\n  {{ name = \"set-b\", pool = \"set-b\", failover = \"set-a\", uris = [{}] }},\n]\n\n{toml}",
                q(&self.src.amqp_uri()), q(&self.set_a.amqp_uri()), q(&self.set_b.amqp_uri())
            );
        }
        Config::new().raw(&toml)
    }

    /// Starts setgate with the shovel; waits until `/api/shovels` says it runs.
    pub async fn start(&self, bin: &Path, dest: Destination) -> anyhow::Result<Setgate> {
        let quiet = SetgateOptions {
            quiet: true,
            ..Default::default()
        };
        let sg = Setgate::start_with(bin, &self.config(dest), quiet).await?;
        wait_until(
            "setgate's shovel running",
            Duration::from_secs(60),
            || async {
                let v = sg.get_json("/api/shovels").await.ok()?;
                (v["shovels"][0]["state"] == "running").then_some(())
            },
        )
        .await?;
        Ok(sg)
    }
}
