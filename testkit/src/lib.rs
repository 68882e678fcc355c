//! Test and benchmark harness for setgate.
//!
//! Everything here runs real components: RabbitMQ nodes from Debian's `rabbitmq-server` on loopback
//! (each with its own node name, ports and data directory), setgate itself as a child process, and
//! plain HTTP to the management API and to setgate's admin server.
//!
//! - [`node`]: start, stop, kill -9, SIGSTOP and restart RabbitMQ nodes; join three into a cluster.
//! - [`setgate`]: run the setgate binary with a config, wait until it is ready, reload, stop, kill.
//! - [`config`]: typed builders for the config files tests and benchmarks run setgate with.
//! - [`amqp_lite`]: a real AMQP client that only does the connection handshake, for storms of
//!   thousands of connections (one task each, no thread).
//! - [`http`]: a tiny HTTP/1.1 client for the management API and the admin API.
//! - [`netns`], [`vrrp_lab`]: network namespaces, Keepalived, and the VRRP lab built on them.
//! - [`netfault`]: blackhole a port with iptables (packets dropped both ways, no reset).
//! - [`net`]: free ports and "wait until" helpers (tests wait on readiness, never on sleeps).
//! - [`chaos`]: the chaos run (two datacenters, random real faults, the books kept).
//! - [`wan`]: a delayed, lossy link (delay line + iptables random drops) for WAN tests.
//!
//! Nodes and setgate processes are cleaned up when their handle drops, and — for nodes shared through
//! a `static` by all tests of one test binary — by a watchdog that kills the node once the test
//! process is gone.

pub mod amqp;
pub mod amqp_lite;
pub mod chaos;
pub mod config;
pub mod fed;
pub mod http;
pub mod net;
pub mod netfault;
pub mod netns;
pub mod node;
pub mod pki;
pub mod setgate;
pub mod vrrp_lab;
pub mod wan;

pub use net::{free_port, raise_fd_limit, wait_until};
pub use node::{Cluster, Node, NodeOptions};
pub use setgate::Setgate;

/// The directory under which every node and setgate process of this run keeps its files.
///
/// `SETGATE_TEST_DIR` overrides it; the default is `/tmp/setgate-tests`. Each user of it makes a
/// subdirectory named after its own pid and a counter, so parallel test binaries never collide.
pub fn run_dir() -> std::path::PathBuf {
    std::env::var_os("SETGATE_TEST_DIR")
        .map(Into::into)
        .unwrap_or_else(|| std::path::PathBuf::from("/tmp/setgate-tests"))
}

/// A fresh, unique directory under [`run_dir`] named `{prefix}-{pid}-{n}`.
pub fn unique_dir(prefix: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = run_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create test directory");
    dir
}
