//! The proxy's part of setgate's TOML config: `[admin]`, `[[listener]]`, `[[pool]]` (and the
//! `[routing]` table, whose type lives in the `router` crate).
//!
//! Field names follow HAProxy (`balance`, `inter`, `rise`, `fall`, `backup`, `maxconn`, `send_proxy`)
//! so that people who run HAProxy in front of RabbitMQ today recognise them. Every struct rejects
//! unknown fields: a typo is an error, never a silently ignored setting.

use serde::{Deserialize, Serialize};
use setgate_router::RoutingConfig;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Everything the proxy runs: admin server, listeners, pools and the SET routing table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProxyConfig {
    /// `[admin]`; `None` runs no admin server.
    pub admin: Option<AdminConfig>,
    /// `[[listener]]`.
    pub listeners: Vec<ListenerConfig>,
    /// `[[pool]]`.
    pub pools: Vec<PoolConfig>,
    /// `[routing]`, needed by listeners in `set` mode.
    pub routing: Option<RoutingConfig>,
}

/// `[admin]`: the HTTP server for health, readiness, metrics, the JSON API and the status page.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address to listen on, e.g. `127.0.0.1:9090`.
    pub listen: String,
    /// File holding the bearer token that every mutating endpoint requires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Where admin states and weights set through the API are kept, so they survive a restart
    /// (HAProxy's `server-state-file`). Written (temp file + rename) on every change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_file: Option<PathBuf>,
}

/// What a listener does with a connection.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ListenerMode {
    /// AMQP-aware: read the handshake, route by user to a SET's pool.
    Set,
    /// Plain L4: every connection goes to the listener's `pool`.
    #[default]
    Tcp,
}

/// `[[listener]]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Unique name, used in logs, metrics and the API.
    pub name: String,
    /// `IP:PORT` to accept on.
    pub bind: String,
    /// `set` or `tcp`.
    #[serde(default)]
    pub mode: ListenerMode,
    /// The pool of a `tcp` listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Terminate TLS on this listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTls>,
    /// Expect a PROXY protocol v1 or v2 header from an L4 balancer in front.
    #[serde(default)]
    pub accept_proxy: bool,
    /// Most connections open at once through this listener; more are refused at once.
    #[serde(default = "default_listener_maxconn")]
    pub maxconn: usize,
    /// Deadline for everything before bytes flow: PROXY header, TLS and (set mode) AMQP handshake.
    #[serde(default = "default_handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Bind even when the address is not (yet) on this host (IP_FREEBIND), for a virtual IP that
    /// VRRP may move here later. Set automatically for addresses in `[vrrp] vip`.
    #[serde(default)]
    pub freebind: bool,
    /// New connections accepted per second (HAProxy's `rate-limit sessions`): above it the accept
    /// loop waits, and new clients wait in the kernel's accept queue (up to `backlog`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<u32>,
    /// Length of the kernel's accept queue (HAProxy's `backlog`; the kernel caps it at
    /// `net.core.somaxconn`): how many clients may wait while the listener is at `maxconn` or
    /// `rate_limit`; beyond it the kernel turns new clients away.
    #[serde(default = "default_backlog")]
    pub backlog: u32,
    /// `set` listeners: connection limits per user, per vhost and per source address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsConfig>,
}

/// `limits = { ... }` of a `set` listener. Rates are new connections per second with one second
/// of burst (token buckets); counts are connections open through this listener.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Most connections open at once per SASL user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_maxconn: Option<u32>,
    /// Most new connections per second per SASL user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_rate: Option<u32>,
    /// Most connections open at once per virtual host (from Connection.Open).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost_maxconn: Option<u32>,
    /// Most new connections per second per virtual host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost_rate: Option<u32>,
    /// Most new connections per second per client IP address, counted on arrival.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_rate: Option<u32>,
    /// `false`: count and log what would be refused, refuse nothing.
    #[serde(default = "default_enforce")]
    pub enforce: bool,
    /// Per-user limits that replace `user_maxconn` / `user_rate` for that user.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub overrides: std::collections::BTreeMap<String, UserLimits>,
}

/// One user's entry in `limits.overrides`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UserLimits {
    /// Replaces `user_maxconn` for this user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maxconn: Option<u32>,
    /// Replaces `user_rate` for this user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u32>,
}

/// TLS terminated by a listener.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA bundle; when set, clients must present a certificate it signed (mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
}

/// How a pool picks a server for a new connection.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Balance {
    /// Each server in turn.
    #[default]
    Roundrobin,
    /// The server with the fewest active connections.
    Leastconn,
    /// The first server (in file order) with a free slot under its `maxconn`.
    First,
}

/// What happens to established connections when their server is marked down.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum OnMarkedDown {
    /// Close them, so clients reconnect through a healthy server.
    ShutdownSessions,
}

/// `[[pool]]`: servers that can serve the same clients.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Unique name.
    pub name: String,
    /// `roundrobin`, `leastconn` or `first`.
    #[serde(default)]
    pub balance: Balance,
    /// The active health check.
    #[serde(default)]
    pub check: CheckConfig,
    /// Send a PROXY protocol v2 header to the server (RabbitMQ: `proxy_protocol = true`).
    #[serde(default)]
    pub send_proxy: bool,
    /// Speak TLS (amqps) to the servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTls>,
    /// How many more servers to try when a connect fails (each one a different server).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Deadline for one TCP connect (and TLS handshake) to a server.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// `shutdown-sessions`: close a server's connections when it is marked down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_marked_down: Option<OnMarkedDown>,
    /// A server that comes back (health up, or admin back to ready) ramps its weight from almost
    /// nothing to its full weight over this window instead of taking the whole herd at once.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub slowstart: Option<Duration>,
    /// For `set` listeners: broker connections per server opened ahead of time, up to the
    /// broker's Connection.Start, so a client's StartOk goes out at once (0: none).
    #[serde(default = "default_preopen")]
    pub preopen: usize,
    /// How long a pre-opened connection waits for a client before it is closed (and replaced
    /// while clients keep coming). Well under the broker's `handshake_timeout`.
    #[serde(default = "default_preopen_max_age", with = "humantime_serde")]
    pub preopen_max_age: Duration,
    /// The servers, primaries and backups, in order.
    pub servers: Vec<ServerConfig>,
}

/// One server of a pool.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Unique within the pool.
    pub name: String,
    /// `HOST:PORT` of the broker's AMQP listener.
    pub addr: String,
    /// Used only while no primary server is up.
    #[serde(default)]
    pub backup: bool,
    /// Most connections at once to this server; a full server is skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maxconn: Option<usize>,
    /// Share of new connections relative to the pool's other servers (`roundrobin`, `leastconn`);
    /// 0 takes nothing new, like a drain. 0 to [`MAX_WEIGHT`].
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Port the health check connects to instead of the one in `addr` (e.g. the management port
    /// for `kind = "http"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_port: Option<u16>,
}

/// Which probe a health check runs.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// A TCP connect succeeds.
    #[default]
    Tcp,
    /// The broker answers the AMQP protocol header with Connection.Start.
    Amqp,
    /// An HTTP GET of `path` answers `expect_status`.
    Http,
}

/// The active health check of a pool's servers.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    /// `tcp`, `amqp` or `http`.
    #[serde(default)]
    pub kind: CheckKind,
    /// Interval between checks while the state is stable.
    #[serde(default = "default_inter", with = "humantime_serde")]
    pub inter: Duration,
    /// Interval while the state is changing (some results, not yet `rise`/`fall`); default `inter`.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub fastinter: Option<Duration>,
    /// Interval while the server is down; default `inter`.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub downinter: Option<Duration>,
    /// Consecutive successes that bring a down server up.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Consecutive failures that bring an up server down.
    #[serde(default = "default_fall")]
    pub fall: u32,
    /// Deadline for one check.
    #[serde(default = "default_check_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// `http` checks: the path to GET.
    #[serde(default = "default_http_path")]
    pub path: String,
    /// `http` checks: the status that means healthy.
    #[serde(default = "default_expect_status")]
    pub expect_status: u16,
    /// `http` checks: `USER:PASSWORD` for basic authentication (masked in every output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Secret>,
}

impl Default for CheckConfig {
    fn default() -> Self {
        CheckConfig {
            kind: CheckKind::default(),
            inter: default_inter(),
            fastinter: None,
            downinter: None,
            rise: default_rise(),
            fall: default_fall(),
            timeout: default_check_timeout(),
            path: default_http_path(),
            expect_status: default_expect_status(),
            auth: None,
        }
    }
}

/// TLS from setgate to the servers of a pool.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientTls {
    /// PEM CA bundle that signed the brokers' certificates.
    pub ca: PathBuf,
    /// Name to verify in the broker's certificate; default: the host part of the server's `addr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// `false`: any name in a certificate that chains to `ca` is taken and no SNI is sent, for
    /// brokers whose certificates do not name the address they are reached at (HAProxy's
    /// `verify required` without `verifyhost` or `sni`).
    #[serde(default = "default_verify_name", skip_serializing_if = "is_true")]
    pub verify_name: bool,
    /// PEM client certificate, for brokers that require one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// PEM key of `cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

/// A secret string: its `Debug` and `Serialize` print `MASKED`, never the value.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The value itself, for the one place that must use it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MASKED")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("MASKED")
    }
}

/// The largest `weight` a server may have (HAProxy's limit too).
pub const MAX_WEIGHT: u32 = 256;

/// A server's `weight` when the file gives none.
pub fn default_weight() -> u32 {
    1
}
fn default_listener_maxconn() -> usize {
    20_000
}
fn default_backlog() -> u32 {
    4096
}
fn default_enforce() -> bool {
    true
}
fn default_verify_name() -> bool {
    true
}
fn is_true(b: &bool) -> bool {
    *b
}
fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_retries() -> u32 {
    3
}
fn default_preopen() -> usize {
    2
}
fn default_preopen_max_age() -> Duration {
    Duration::from_secs(3)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_inter() -> Duration {
    Duration::from_secs(2)
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}
fn default_check_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_http_path() -> String {
    "/api/health/checks/virtual-hosts".into()
}
fn default_expect_status() -> u16 {
    200
}

impl CheckConfig {
    /// Interval while changing state.
    pub fn fastinter(&self) -> Duration {
        self.fastinter.unwrap_or(self.inter)
    }
    /// Interval while down.
    pub fn downinter(&self) -> Duration {
        self.downinter.unwrap_or(self.inter)
    }
}

impl ProxyConfig {
    /// The pool called `name`.
    pub fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|p| p.name == name)
    }
}
