//! Typed builders for setgate config files.
//!
//! A test says only what it varies; [`Config`]'s `Display` writes the TOML a user would write, in
//! the README's order and with its key names, so the file a test ran can be printed and read:
//!
//! ```
//! use setgate_testkit::config::{Check, Config, Listener, Pool};
//! let cfg = Config::new()
//!     .listener(Listener::tcp("amqp", "p"))
//!     .pool(Pool::new("p").check(Check::amqp().inter("500ms")).server("n", "127.0.0.1:5672"));
//! assert!(cfg.to_string().contains("check = { kind = \"amqp\", inter = \"500ms\" }"));
//! ```
//!
//! Listeners bind `127.0.0.1:0` unless told otherwise (a free port each when a config has several,
//! see [`Config::listener`]); [`crate::Setgate::addr`] reads the bound address back. Anything the
//! builders do not know goes in through [`Config::raw`] or a builder's `with`.

use crate::net::free_port;
use crate::node::Node;
use std::fmt::{self, Display, Write as _};
use std::path::Path;

/// A TOML value, kept in the order it was given.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A string.
    Str(String),
    /// An integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// An array, written inline (one entry a line when it holds several tables).
    Array(Vec<Value>),
    /// An inline table.
    Table(Vec<(String, Value)>),
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Str(s.into())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Str(s)
    }
}
impl From<&Path> for Value {
    fn from(p: &Path) -> Value {
        Value::Str(p.display().to_string())
    }
}
impl From<std::net::SocketAddr> for Value {
    fn from(a: std::net::SocketAddr) -> Value {
        Value::Str(a.to_string())
    }
}
impl From<i64> for Value {
    fn from(n: i64) -> Value {
        Value::Int(n)
    }
}
impl From<u16> for Value {
    fn from(n: u16) -> Value {
        Value::Int(n.into())
    }
}
impl From<u32> for Value {
    fn from(n: u32) -> Value {
        Value::Int(n.into())
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}
impl<T: Into<Value>> From<Vec<T>> for Value {
    fn from(v: Vec<T>) -> Value {
        Value::Array(v.into_iter().map(Into::into).collect())
    }
}

fn key(k: &str) -> String {
    let bare = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        k.to_string()
    } else {
        toml::Value::String(k.into()).to_string()
    }
}

impl Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Str(s) => write!(f, "{}", toml::Value::String(s.clone())),
            Value::Int(n) => write!(f, "{n}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Array(items) if items.len() > 1 && matches!(items[0], Value::Table(_)) => {
                f.write_str("[\n")?;
                for item in items {
                    writeln!(f, "  {item},")?;
                }
                f.write_str("]")
            }
            Value::Array(items) => {
                let items: Vec<String> = items.iter().map(Value::to_string).collect();
                write!(f, "[{}]", items.join(", "))
            }
            Value::Table(entries) if entries.is_empty() => f.write_str("{}"),
            Value::Table(entries) => {
                let entries: Vec<String> = entries
                    .iter()
                    .map(|(k, v)| format!("{} = {v}", key(k)))
                    .collect();
                write!(f, "{{ {} }}", entries.join(", "))
            }
        }
    }
}

/// `key = value` lines (or the entries of an inline table), in the order they were set; setting a
/// key again replaces its value in place.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Entries(Vec<(String, Value)>);

impl Entries {
    fn set(&mut self, k: &str, v: impl Into<Value>) {
        let v = v.into();
        match self.0.iter_mut().find(|(name, _)| name == k) {
            Some(e) => e.1 = v,
            None => self.0.push((k.into(), v)),
        }
    }

    fn get(&self, k: &str) -> Option<&Value> {
        self.0.iter().find(|(name, _)| name == k).map(|(_, v)| v)
    }

    fn write(&self, out: &mut String) {
        for (k, v) in &self.0 {
            let _ = writeln!(out, "{} = {v}", key(k));
        }
    }

    fn table(self) -> Value {
        Value::Table(self.0)
    }
}

/// Builder methods that set one key each, in `self.$field` (an [`Entries`]).
macro_rules! setters {
    ($field:tt; $($(#[$doc:meta])* $name:ident: $ty:ty => $key:literal;)*) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, v: $ty) -> Self {
                self.$field.set($key, v);
                self
            }
        )*
    };
}

/// A whole config file: top-level keys, `[admin]`, listeners, pools, `[routing]`, federation,
/// shovels and raw TOML, written in that order.
#[derive(Debug, Clone)]
pub struct Config {
    top: Entries,
    admin: Entries,
    listeners: Vec<Listener>,
    pools: Vec<Pool>,
    routing: Option<Routing>,
    upstreams: Vec<Upstream>,
    links: Vec<Link>,
    shovels: Vec<Shovel>,
    raw: String,
}

impl Default for Config {
    fn default() -> Self {
        Config::new()
    }
}

impl Config {
    /// A config with only `[admin] listen` on a fresh port of 127.0.0.1 (tests find setgate there).
    pub fn new() -> Config {
        let mut admin = Entries::default();
        admin.set("listen", format!("127.0.0.1:{}", free_port()));
        Config {
            top: Entries::default(),
            admin,
            listeners: Vec::new(),
            pools: Vec::new(),
            routing: None,
            upstreams: Vec::new(),
            links: Vec::new(),
            shovels: Vec::new(),
            raw: String::new(),
        }
    }

    /// `[admin] listen`.
    pub fn admin(mut self, listen: impl Into<Value>) -> Self {
        self.admin.set("listen", listen);
        self
    }

    /// `[admin] token_file`.
    pub fn token_file(mut self, path: impl AsRef<Path>) -> Self {
        self.admin.set("token_file", path.as_ref());
        self
    }

    /// `[admin] state_file`: runtime states and weights kept across restarts.
    pub fn state_file(mut self, path: impl AsRef<Path>) -> Self {
        self.admin.set("state_file", path.as_ref());
        self
    }

    /// The `[admin] listen` address.
    pub fn admin_addr(&self) -> String {
        match self.admin.get("listen") {
            Some(Value::Str(s)) => s.clone(),
            other => panic!("[admin] listen is {other:?}"),
        }
    }

    /// `shutdown_grace` at the top of the file.
    pub fn shutdown_grace(mut self, d: &str) -> Self {
        self.top.set("shutdown_grace", d);
        self
    }

    /// Adds a `[[listener]]`.
    ///
    /// A listener without its own `bind` takes `127.0.0.1:0` and setgate picks the port. setgate
    /// refuses two listeners on one address, port 0 included, so once a config has several such
    /// listeners each gets a free port of its own instead (see [`free_port`]).
    pub fn listener(mut self, l: Listener) -> Self {
        self.listeners.push(l);
        if self.listeners.iter().filter(|l| l.default_bind).count() > 1 {
            for l in self.listeners.iter_mut().filter(|l| l.default_bind) {
                if l.entries.get("bind") == Some(&Value::from(ANY_PORT)) {
                    l.entries.set("bind", format!("127.0.0.1:{}", free_port()));
                }
            }
        }
        self
    }

    /// Adds a `[[pool]]`.
    pub fn pool(mut self, p: Pool) -> Self {
        self.pools.push(p);
        self
    }

    /// Sets (or replaces) `[routing]`.
    pub fn routing(mut self, r: Routing) -> Self {
        self.routing = Some(r);
        self
    }

    /// Adds a `[[federation.upstream]]`.
    pub fn upstream(mut self, u: Upstream) -> Self {
        self.upstreams.push(u);
        self
    }

    /// Adds a `[[federation.link]]`.
    pub fn link(mut self, l: Link) -> Self {
        self.links.push(l);
        self
    }

    /// Adds a `[[shovel]]`.
    pub fn shovel(mut self, s: Shovel) -> Self {
        self.shovels.push(s);
        self
    }

    /// Appends TOML as written, at the end of the file (for what the builders do not cover).
    pub fn raw(mut self, toml: &str) -> Self {
        self.raw.push_str(toml);
        if !self.raw.ends_with('\n') {
            self.raw.push('\n');
        }
        self
    }

    /// The TOML text: the same as `to_string()`.
    pub fn to_toml(&self) -> String {
        self.to_string()
    }
}

impl Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        let section = |out: &mut String, header: &str, entries: &Entries| {
            if !out.is_empty() {
                out.push('\n');
            }
            let _ = writeln!(out, "{header}");
            entries.write(out);
        };
        self.top.write(&mut out);
        section(&mut out, "[admin]", &self.admin);
        for l in &self.listeners {
            section(&mut out, "[[listener]]", &l.entries);
        }
        for p in &self.pools {
            let mut entries = p.entries.clone();
            if !p.servers.is_empty() {
                entries.set("servers", Value::Array(p.servers.clone()));
            }
            section(&mut out, "[[pool]]", &entries);
        }
        if let Some(r) = &self.routing {
            section(&mut out, "[routing]", &r.entries());
        }
        for u in &self.upstreams {
            section(&mut out, "[[federation.upstream]]", &u.0);
        }
        for l in &self.links {
            section(&mut out, "[[federation.link]]", &l.0);
        }
        for s in &self.shovels {
            section(&mut out, "[[shovel]]", &s.0);
        }
        if !self.raw.is_empty() {
            out.push('\n');
            out.push_str(&self.raw);
        }
        f.write_str(&out)
    }
}

/// A `[[listener]]`.
#[derive(Debug, Clone)]
pub struct Listener {
    entries: Entries,
    /// No `bind` was given: the config chooses one (see [`Config::listener`]).
    default_bind: bool,
}

/// Where a listener binds unless told otherwise: setgate picks the port.
const ANY_PORT: &str = "127.0.0.1:0";

impl Listener {
    fn new(name: &str) -> Listener {
        let mut entries = Entries::default();
        entries.set("name", name);
        entries.set("bind", ANY_PORT);
        Listener {
            entries,
            default_bind: true,
        }
    }

    /// A `tcp` listener (the default mode) in front of `pool`, on 127.0.0.1 (see [`Config::listener`]).
    pub fn tcp(name: &str, pool: &str) -> Listener {
        let mut l = Listener::new(name);
        l.entries.set("pool", pool);
        l
    }

    /// A `set` listener (routes by `[routing]`), on 127.0.0.1 (see [`Config::listener`]).
    pub fn set(name: &str) -> Listener {
        let mut l = Listener::new(name);
        l.entries.set("mode", "set");
        l
    }

    /// `bind`.
    pub fn bind(mut self, addr: impl Into<Value>) -> Self {
        self.default_bind = false;
        self.entries.set("bind", addr);
        self
    }

    /// `tls = { cert, key }`.
    pub fn tls(mut self, cert: &Path, key: &Path) -> Self {
        let mut t = Entries::default();
        t.set("cert", cert);
        t.set("key", key);
        self.entries.set("tls", t.table());
        self
    }

    /// `tls = { cert, key, client_ca }`: mutual TLS.
    pub fn mutual_tls(mut self, cert: &Path, key: &Path, client_ca: &Path) -> Self {
        let mut t = Entries::default();
        t.set("cert", cert);
        t.set("key", key);
        t.set("client_ca", client_ca);
        self.entries.set("tls", t.table());
        self
    }

    /// Any other key.
    pub fn with(mut self, k: &str, v: impl Into<Value>) -> Self {
        self.entries.set(k, v);
        self
    }

    setters! {
        entries;
        /// `maxconn`.
        maxconn: u32 => "maxconn";
        /// `accept_proxy`: PROXY v1/v2 from a balancer in front.
        accept_proxy: bool => "accept_proxy";
        /// `handshake_timeout`.
        handshake_timeout: &str => "handshake_timeout";
        /// `rate_limit`: new connections accepted per second.
        rate_limit: u32 => "rate_limit";
    }

    /// `limits = { ... }` (set listeners).
    pub fn limits(mut self, l: Limits) -> Self {
        let mut e = l.entries;
        if !l.overrides.is_empty() {
            e.set("overrides", Value::Table(l.overrides));
        }
        self.entries.set("limits", e.table());
        self
    }
}

/// `limits = { user_maxconn, user_rate, vhost_maxconn, vhost_rate, source_rate, enforce,
/// overrides }` of a set listener.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    entries: Entries,
    overrides: Vec<(String, Value)>,
}

impl Limits {
    /// No limit yet.
    pub fn new() -> Limits {
        Limits::default()
    }

    /// `overrides = { "USER" = { maxconn } }`.
    pub fn override_maxconn(mut self, user: &str, maxconn: u32) -> Self {
        let mut e = Entries::default();
        e.set("maxconn", maxconn);
        self.overrides.push((user.into(), e.table()));
        self
    }

    setters! {
        entries;
        /// `user_maxconn`.
        user_maxconn: u32 => "user_maxconn";
        /// `user_rate`.
        user_rate: u32 => "user_rate";
        /// `vhost_maxconn`.
        vhost_maxconn: u32 => "vhost_maxconn";
        /// `vhost_rate`.
        vhost_rate: u32 => "vhost_rate";
        /// `source_rate`.
        source_rate: u32 => "source_rate";
        /// `enforce`.
        enforce: bool => "enforce";
    }
}

/// A `[[pool]]`; `servers` is written last.
#[derive(Debug, Clone)]
pub struct Pool {
    entries: Entries,
    servers: Vec<Value>,
}

impl Pool {
    /// A pool named `name` with no servers yet.
    pub fn new(name: &str) -> Pool {
        let mut entries = Entries::default();
        entries.set("name", name);
        Pool {
            entries,
            servers: Vec::new(),
        }
    }

    /// Adds `{ name, addr }` to `servers`.
    pub fn server(self, name: &str, addr: impl Into<Value>) -> Self {
        self.server_with(Server::new(name, addr))
    }

    /// Adds a server with more keys.
    pub fn server_with(mut self, s: Server) -> Self {
        self.servers.push(s.0.table());
        self
    }

    /// One server per node, named n0, n1, ...
    pub fn nodes(mut self, nodes: &[&Node]) -> Self {
        for (i, n) in nodes.iter().enumerate() {
            self = self.server(&format!("n{i}"), n.amqp_addr());
        }
        self
    }

    /// `check = { ... }`.
    pub fn check(mut self, c: Check) -> Self {
        self.entries.set("check", c.0.table());
        self
    }

    /// `tls = { ca, server_name }`: amqps to the brokers.
    pub fn tls(mut self, ca: &Path, server_name: &str) -> Self {
        let mut t = Entries::default();
        t.set("ca", ca);
        t.set("server_name", server_name);
        self.entries.set("tls", t.table());
        self
    }

    /// `tls = { ca, verify_name = false }`: amqps to the brokers, whatever names their
    /// certificates hold.
    pub fn tls_any_name(mut self, ca: &Path) -> Self {
        let mut t = Entries::default();
        t.set("ca", ca);
        t.set("verify_name", false);
        self.entries.set("tls", t.table());
        self
    }

    /// Any other key.
    pub fn with(mut self, k: &str, v: impl Into<Value>) -> Self {
        self.entries.set(k, v);
        self
    }

    /// `balance`: roundrobin | leastconn | first.
    pub fn balance(mut self, b: &str) -> Self {
        self.entries.set("balance", b);
        self
    }

    /// `on_marked_down`.
    pub fn on_marked_down(mut self, what: &str) -> Self {
        self.entries.set("on_marked_down", what);
        self
    }

    /// `send_proxy`: PROXY v2 to the brokers.
    pub fn send_proxy(mut self, on: bool) -> Self {
        self.entries.set("send_proxy", on);
        self
    }

    /// `slowstart`: the window over which a server that comes back ramps up to its weight.
    pub fn slowstart(mut self, d: &str) -> Self {
        self.entries.set("slowstart", d);
        self
    }
}

/// One entry of a pool's `servers`.
#[derive(Debug, Clone)]
pub struct Server(Entries);

impl Server {
    /// `{ name, addr }`.
    pub fn new(name: &str, addr: impl Into<Value>) -> Server {
        let mut e = Entries::default();
        e.set("name", name);
        e.set("addr", addr);
        Server(e)
    }

    setters! {
        0;
        /// `backup`: used only when no primary is up.
        backup: bool => "backup";
        /// `check_port`: where the health check connects instead of `addr`'s port.
        check_port: u16 => "check_port";
        /// `maxconn`.
        maxconn: u32 => "maxconn";
        /// `weight`: share of new connections (0 = none).
        weight: u32 => "weight";
    }
}

/// A pool's `check = { ... }`.
#[derive(Debug, Clone)]
pub struct Check(Entries);

impl Check {
    fn kind(kind: &str) -> Check {
        let mut e = Entries::default();
        e.set("kind", kind);
        Check(e)
    }

    /// `kind = "amqp"`: a full AMQP handshake.
    pub fn amqp() -> Check {
        Check::kind("amqp")
    }

    /// `kind = "tcp"`: a TCP connect.
    pub fn tcp() -> Check {
        Check::kind("tcp")
    }

    /// `kind = "http"` on `path`.
    pub fn http(path: &str) -> Check {
        let mut c = Check::kind("http");
        c.0.set("path", path);
        c
    }

    setters! {
        0;
        /// `auth = "user:password"` for an http check.
        auth: &str => "auth";
        /// `inter`: time between checks.
        inter: &str => "inter";
        /// `fall`: failures before a server is marked down.
        fall: u32 => "fall";
        /// `rise`: successes before it is marked up again.
        rise: u32 => "rise";
        /// `timeout` of one check.
        timeout: &str => "timeout";
    }
}

/// `[routing]`.
#[derive(Debug, Clone)]
pub struct Routing {
    entries: Entries,
    sets: Vec<Entries>,
    overrides: Entries,
}

impl Routing {
    /// Keys of no SET go to pool `default`.
    pub fn new(default: &str) -> Routing {
        let mut entries = Entries::default();
        entries.set("default", default);
        Routing {
            entries,
            sets: Vec::new(),
            overrides: Entries::default(),
        }
    }

    /// Adds `{ name, pool, failover }` to `sets`.
    pub fn set(mut self, name: &str, pool: &str, failover: &str) -> Self {
        let mut e = Entries::default();
        e.set("name", name);
        e.set("pool", pool);
        e.set("failover", failover);
        self.sets.push(e);
        self
    }

    /// `uris` of SET `set` (added with [`Routing::set`] before): its cluster's messaging URIs,
    /// for flows that route messages to SETs.
    pub fn uris<S: AsRef<str>>(mut self, set: &str, uris: &[S]) -> Self {
        let entry = self
            .sets
            .iter_mut()
            .find(|e| e.get("name") == Some(&Value::from(set)))
            .unwrap_or_else(|| {
                panic!("Routing::uris: no SET {set:?}; add it with Routing::set first")
            });
        entry.set("uris", strings(uris));
        self
    }

    /// `default_uris`: the messaging URIs of the default (center) cluster.
    pub fn default_uris<S: AsRef<str>>(mut self, uris: &[S]) -> Self {
        self.entries.set("default_uris", strings(uris));
        self
    }

    /// `strategy = "buckets"` with `buckets = n` and `bucket_map` from `(range, set)` pairs.
    pub fn buckets(mut self, n: u32, map: &[(&str, &str)]) -> Self {
        self.entries.set("strategy", "buckets");
        self.entries.set("buckets", n);
        let map: Vec<Value> = map
            .iter()
            .map(|(range, set)| {
                let mut e = Entries::default();
                e.set("range", *range);
                e.set("set", *set);
                e.table()
            })
            .collect();
        self.entries.set("bucket_map", Value::Array(map));
        self
    }

    /// Adds `"key" = "set"` to `overrides`.
    pub fn override_key(mut self, key: &str, set: &str) -> Self {
        self.overrides.set(key, set);
        self
    }

    /// `reroute = { window }`: a reload closes the connections whose user moved, over `window`.
    pub fn reroute(mut self, window: &str) -> Self {
        let mut e = Entries::default();
        e.set("window", window);
        self.entries.set("reroute", e.table());
        self
    }

    /// `key`: username | client_property:NAME.
    pub fn key(mut self, key: &str) -> Self {
        self.entries.set("key", key);
        self
    }

    /// Any other key.
    pub fn with(mut self, k: &str, v: impl Into<Value>) -> Self {
        self.entries.set(k, v);
        self
    }

    fn entries(&self) -> Entries {
        let mut e = self.entries.clone();
        let sets = self.sets.iter().map(|s| s.clone().table()).collect();
        e.set("sets", Value::Array(sets));
        if !self.overrides.0.is_empty() {
            e.set("overrides", self.overrides.clone().table());
        }
        e
    }
}

/// A `[[federation.upstream]]`.
#[derive(Debug, Clone)]
pub struct Upstream(Entries);

impl Upstream {
    /// An upstream tried at `uris` in order, with a 1 s reconnect delay.
    pub fn new<S: AsRef<str>>(name: &str, uris: &[S]) -> Upstream {
        let mut e = Entries::default();
        e.set("name", name);
        e.set("uris", strings(uris));
        e.set("reconnect_delay", "1s");
        Upstream(e)
    }

    /// Any other key.
    pub fn with(mut self, k: &str, v: impl Into<Value>) -> Self {
        self.0.set(k, v);
        self
    }

    setters! {
        0;
        /// `reconnect_delay`.
        reconnect_delay: &str => "reconnect_delay";
        /// `max_hops`.
        max_hops: u32 => "max_hops";
        /// `prefetch_count`.
        prefetch_count: u32 => "prefetch_count";
        /// `ack_mode`: on-confirm | on-publish | no-ack.
        ack_mode: &str => "ack_mode";
    }
}

/// A `[[federation.link]]`.
#[derive(Debug, Clone)]
pub struct Link(Entries);

impl Link {
    /// Link `name` from `upstreams` to the downstream `downstream` at `uris`, for `exchanges`.
    pub fn new<S: AsRef<str>>(
        name: &str,
        upstreams: &[&str],
        downstream: &str,
        uris: &[S],
        exchanges: &[&str],
    ) -> Link {
        let mut down = Entries::default();
        down.set("name", downstream);
        down.set("uris", strings(uris));
        let mut e = Entries::default();
        e.set("name", name);
        e.set("upstreams", strings(upstreams));
        e.set("downstream", down.table());
        e.set("exchanges", strings(exchanges));
        Link(e)
    }

    /// Link `name` from `upstreams` for `exchanges` whose downstream routes each message
    /// ([`Destination::sets`]) or sends it to every SET ([`Destination::all_sets`]).
    pub fn routed(
        name: &str,
        upstreams: &[&str],
        downstream: Destination,
        exchanges: &[&str],
    ) -> Link {
        let mut e = Entries::default();
        e.set("name", name);
        e.set("upstreams", strings(upstreams));
        e.set("downstream", downstream.0.table());
        e.set("exchanges", strings(exchanges));
        Link(e)
    }

    /// Any other key.
    pub fn with(mut self, k: &str, v: impl Into<Value>) -> Self {
        self.0.set(k, v);
        self
    }
}

/// A `[[shovel]]`: moves the messages of a queue (or of an exchange, through a queue setgate
/// declares) to an exchange or a queue of another cluster, or to the clusters of SETs.
#[derive(Debug, Clone)]
pub struct Shovel(Entries);

impl Shovel {
    /// Shovel `name` from `source` to `destination`, with a 1 s reconnect delay.
    pub fn new(name: &str, source: Source, destination: Destination) -> Shovel {
        let mut e = Entries::default();
        e.set("name", name);
        e.set("source", source.0.table());
        e.set("destination", destination.0.table());
        e.set("reconnect_delay", "1s");
        Shovel(e)
    }

    /// `delete_after = "never" | "queue-length"` (or anything else, to test how it is refused).
    pub fn delete_after(mut self, when: &str) -> Self {
        self.0.set("delete_after", when);
        self
    }

    /// `delete_after = N`: move `n` messages, then stop.
    pub fn delete_after_messages(mut self, n: u32) -> Self {
        self.0.set("delete_after", n);
        self
    }

    /// Any other key.
    pub fn with(mut self, k: &str, v: impl Into<Value>) -> Self {
        self.0.set(k, v);
        self
    }

    setters! {
        0;
        /// `ack_mode`: on-confirm | on-publish | no-ack.
        ack_mode: &str => "ack_mode";
        /// `prefetch_count`.
        prefetch_count: u32 => "prefetch_count";
        /// `reconnect_delay`.
        reconnect_delay: &str => "reconnect_delay";
        /// `add_forward_headers`: the plugin's `x-shovelled` header.
        add_forward_headers: bool => "add_forward_headers";
    }
}

/// A shovel's `source`.
#[derive(Debug, Clone)]
pub struct Source(Entries);

impl Source {
    /// `{ uris, queue }`: an existing queue.
    pub fn queue<S: AsRef<str>>(uris: &[S], queue: &str) -> Source {
        let mut e = Entries::default();
        e.set("uris", strings(uris));
        e.set("queue", queue);
        Source(e)
    }

    /// `{ uris, exchange }`: setgate declares and binds its own queue `shovel: NAME`.
    pub fn exchange<S: AsRef<str>>(uris: &[S], exchange: &str) -> Source {
        let mut e = Entries::default();
        e.set("uris", strings(uris));
        e.set("exchange", exchange);
        Source(e)
    }

    /// `binding_keys` of an exchange source's queue.
    pub fn binding_keys(mut self, keys: &[&str]) -> Self {
        self.0.set("binding_keys", strings(keys));
        self
    }

    /// Any other key.
    pub fn with(mut self, k: &str, v: impl Into<Value>) -> Self {
        self.0.set(k, v);
        self
    }
}

/// Where a shovel sends messages (`destination`), or the routed `downstream` of a link.
#[derive(Debug, Clone)]
pub struct Destination(Entries);

impl Destination {
    /// `{ uris, exchange }`: the message's routing key is kept unless [`Destination::routing_key`].
    pub fn exchange<S: AsRef<str>>(uris: &[S], exchange: &str) -> Destination {
        let mut e = Entries::default();
        e.set("uris", strings(uris));
        e.set("exchange", exchange);
        Destination(e)
    }

    /// `{ uris, queue }`.
    pub fn queue<S: AsRef<str>>(uris: &[S], queue: &str) -> Destination {
        let mut e = Entries::default();
        e.set("uris", strings(uris));
        e.set("queue", queue);
        Destination(e)
    }

    /// `{ route = "sets", key }`: each message to the cluster of the SET its `key` routes to
    /// (`header:NAME`, `property:NAME` or `routing_key`), by `[routing]`.
    pub fn sets(key: &str) -> Destination {
        let mut e = Entries::default();
        e.set("route", "sets");
        e.set("key", key);
        Destination(e)
    }

    /// `{ route = "all-sets", exchange }`: every message to every SET's cluster.
    pub fn all_sets(exchange: &str) -> Destination {
        let mut e = Entries::default();
        e.set("route", "all-sets");
        e.set("exchange", exchange);
        Destination(e)
    }

    /// `exchange` of a routed destination (it defaults to the source's exchange).
    pub fn exchange_name(mut self, exchange: &str) -> Self {
        self.0.set("exchange", exchange);
        self
    }

    /// Any other key.
    pub fn with(mut self, k: &str, v: impl Into<Value>) -> Self {
        self.0.set(k, v);
        self
    }

    setters! {
        0;
        /// `routing_key`: replaces the message's.
        routing_key: &str => "routing_key";
        /// `on_set_down`: hold | failover.
        on_set_down: &str => "on_set_down";
        /// `include_default`: all-sets also delivers to the default (center) cluster.
        include_default: bool => "include_default";
    }
}

fn strings<S: AsRef<str>>(items: &[S]) -> Value {
    Value::Array(items.iter().map(|s| s.as_ref().into()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_what_a_user_would_write() {
        let cfg = Config::new()
            .admin("127.0.0.1:9090")
            .token_file(Path::new("/etc/setgate/token"))
            .shutdown_grace("3s")
            .listener(
                Listener::tcp("tls", "p")
                    .bind("127.0.0.1:5671")
                    .mutual_tls(Path::new("c.pem"), Path::new("k.pem"), Path::new("ca.pem"))
                    .maxconn(5),
            )
            .listener(
                Listener::set("amqp")
                    .bind("0.0.0.0:5672")
                    .handshake_timeout("2s"),
            )
            .pool(
                Pool::new("p")
                    .balance("first")
                    .check(Check::amqp().inter("500ms").fall(3).timeout("400ms"))
                    .server("a", "10.0.0.1:5672")
                    .server_with(Server::new("b", "10.0.0.2:5672").backup(true)),
            )
            .routing(
                Routing::new("p")
                    .set("set-a", "p", "set-b")
                    .set("set-b", "p", "set-a")
                    .override_key("user-007", "set-b"),
            )
            .upstream(Upstream::new("dc1", &["amqp://h1/%2f"]).max_hops(1))
            .link(Link::new(
                "l",
                &["dc1"],
                "dc2",
                &["amqp://h2/%2f"],
                &["orders"],
            ))
            .raw("[vrrp]\nvrid = 51");
        let want = r#"shutdown_grace = "3s"

[admin]
listen = "127.0.0.1:9090"
token_file = "/etc/setgate/token"

[[listener]]
name = "tls"
bind = "127.0.0.1:5671"
pool = "p"
tls = { cert = "c.pem", key = "k.pem", client_ca = "ca.pem" }
maxconn = 5

[[listener]]
name = "amqp"
bind = "0.0.0.0:5672"
mode = "set"
handshake_timeout = "2s"

[[pool]]
name = "p"
balance = "first"
check = { kind = "amqp", inter = "500ms", fall = 3, timeout = "400ms" }
servers = [
  { name = "a", addr = "10.0.0.1:5672" },
  { name = "b", addr = "10.0.0.2:5672", backup = true },
]

[routing]
default = "p"
sets = [
  { name = "set-a", pool = "p", failover = "set-b" },
  { name = "set-b", pool = "p", failover = "set-a" },
]
overrides = { user-007 = "set-b" }

[[federation.upstream]]
name = "dc1"
uris = ["amqp://h1/%2f"]
reconnect_delay = "1s"
max_hops = 1

[[federation.link]]
name = "l"
upstreams = ["dc1"]
downstream = { name = "dc2", uris = ["amqp://h2/%2f"] }
exchanges = ["orders"]

[vrrp]
vrid = 51
"#;
        assert_eq!(cfg.to_string(), want);
        let parsed: toml::Value = toml::from_str(&cfg.to_toml()).expect("valid TOML");
        assert_eq!(
            parsed["listener"][0]["tls"]["client_ca"].as_str(),
            Some("ca.pem")
        );
        assert_eq!(
            parsed["pool"][0]["servers"][1]["backup"].as_bool(),
            Some(true)
        );
        assert_eq!(
            parsed["routing"]["overrides"]["user-007"].as_str(),
            Some("set-b")
        );
        assert_eq!(
            parsed["federation"]["link"][0]["downstream"]["name"].as_str(),
            Some("dc2")
        );
        assert_eq!(parsed["vrrp"]["vrid"].as_integer(), Some(51));
    }

    #[test]
    fn writes_shovels_routed_destinations_and_set_uris_as_a_user_would() {
        let c = "amqp://u:p@center:5672/%2f";
        let cfg = Config::new()
            .admin("127.0.0.1:9090")
            .pool(Pool::new("center").server("c1", "10.0.0.1:5672"))
            .routing(
                Routing::new("center")
                    .buckets(10, &[("0-4", "set-a"), ("5-9", "set-b")])
                    .default_uris(&[c])
                    .set("set-a", "set-a", "set-b")
                    .set("set-b", "set-b", "set-a")
                    .uris("set-a", &["amqp://u:p@set-a-1:5672/%2f"])
                    .uris("set-b", &["amqp://u:p@set-b-1:5672/%2f"])
                    .override_key("user-007", "center"),
            )
            .upstream(Upstream::new("hq", &["amqp://u:p@hq:5672/%2f"]))
            .link(Link::routed(
                "orders-to-sets",
                &["hq"],
                Destination::sets("header:x-user-id").on_set_down("failover"),
                &["orders"],
            ))
            .shovel(
                Shovel::new(
                    "dlq-replay",
                    Source::queue(&[c], "orders.dlq"),
                    Destination::exchange(&["amqp://u:p@dc2:5672/%2f"], "orders").routing_key("k"),
                )
                .ack_mode("on-publish")
                .prefetch_count(10)
                .delete_after("queue-length")
                .add_forward_headers(true),
            )
            .shovel(
                Shovel::new(
                    "to-sets",
                    Source::exchange(&[c], "orders").binding_keys(&["eu.#"]),
                    Destination::sets("property:user_id")
                        .exchange_name("deliver")
                        .on_set_down("hold"),
                )
                .delete_after_messages(5),
            )
            .shovel(Shovel::new(
                "catalog",
                Source::exchange(&[c], "catalog.in"),
                Destination::all_sets("catalog").include_default(true),
            ))
            .shovel(Shovel::new(
                "to-queue",
                Source::queue(&[c], "a"),
                Destination::queue(&[c], "b"),
            ));
        let want = r#"[admin]
listen = "127.0.0.1:9090"

[[pool]]
name = "center"
servers = [{ name = "c1", addr = "10.0.0.1:5672" }]

[routing]
default = "center"
strategy = "buckets"
buckets = 10
bucket_map = [
  { range = "0-4", set = "set-a" },
  { range = "5-9", set = "set-b" },
]
default_uris = ["amqp://u:p@center:5672/%2f"]
sets = [
  { name = "set-a", pool = "set-a", failover = "set-b", uris = ["amqp://u:p@set-a-1:5672/%2f"] },
  { name = "set-b", pool = "set-b", failover = "set-a", uris = ["amqp://u:p@set-b-1:5672/%2f"] },
]
overrides = { user-007 = "center" }

[[federation.upstream]]
name = "hq"
uris = ["amqp://u:p@hq:5672/%2f"]
reconnect_delay = "1s"

[[federation.link]]
name = "orders-to-sets"
upstreams = ["hq"]
downstream = { route = "sets", key = "header:x-user-id", on_set_down = "failover" }
exchanges = ["orders"]

[[shovel]]
name = "dlq-replay"
source = { uris = ["amqp://u:p@center:5672/%2f"], queue = "orders.dlq" }
destination = { uris = ["amqp://u:p@dc2:5672/%2f"], exchange = "orders", routing_key = "k" }
reconnect_delay = "1s"
ack_mode = "on-publish"
prefetch_count = 10
delete_after = "queue-length"
add_forward_headers = true

[[shovel]]
name = "to-sets"
source = { uris = ["amqp://u:p@center:5672/%2f"], exchange = "orders", binding_keys = ["eu.#"] }
destination = { route = "sets", key = "property:user_id", exchange = "deliver", on_set_down = "hold" }
reconnect_delay = "1s"
delete_after = 5

[[shovel]]
name = "catalog"
source = { uris = ["amqp://u:p@center:5672/%2f"], exchange = "catalog.in" }
destination = { route = "all-sets", exchange = "catalog", include_default = true }
reconnect_delay = "1s"

[[shovel]]
name = "to-queue"
source = { uris = ["amqp://u:p@center:5672/%2f"], queue = "a" }
destination = { uris = ["amqp://u:p@center:5672/%2f"], queue = "b" }
reconnect_delay = "1s"
"#;
        assert_eq!(cfg.to_string(), want);
        let parsed: toml::Value = toml::from_str(&cfg.to_toml()).expect("valid TOML");
        assert_eq!(
            parsed["routing"]["sets"][1]["uris"][0].as_str(),
            Some("amqp://u:p@set-b-1:5672/%2f")
        );
        assert_eq!(parsed["shovel"][1]["delete_after"].as_integer(), Some(5));
        assert_eq!(
            parsed["federation"]["link"][0]["downstream"]["route"].as_str(),
            Some("sets")
        );
    }

    #[test]
    #[should_panic(expected = "no SET \"set-c\"")]
    fn uris_of_an_unknown_set_is_a_mistake_in_the_test() {
        let _ = Routing::new("center")
            .set("set-a", "a", "set-a")
            .uris("set-c", &["amqp://x"]);
    }

    #[test]
    fn one_listener_binds_port_0_several_get_ports_of_their_own() {
        let one = Config::new().listener(Listener::tcp("a", "p"));
        assert!(one.to_string().contains("bind = \"127.0.0.1:0\""));
        let three = one
            .listener(Listener::tcp("b", "p").bind("127.0.0.1:5672"))
            .listener(Listener::set("c"));
        let parsed: toml::Value = toml::from_str(&three.to_toml()).expect("valid TOML");
        let binds: Vec<&str> = (0..3)
            .map(|i| parsed["listener"][i]["bind"].as_str().unwrap())
            .collect();
        assert_eq!(binds[1], "127.0.0.1:5672");
        assert!(
            binds[0] != binds[2] && !binds.contains(&"127.0.0.1:0"),
            "{binds:?}"
        );
        assert_eq!(three.to_string(), three.to_string(), "rendering is stable");
    }

    #[test]
    fn listeners_get_fresh_ports_and_odd_strings_stay_valid() {
        let cfg = Config::new()
            .listener(Listener::tcp("a", "p"))
            .listener(Listener::tcp("b", "p"))
            .pool(Pool::new("p").server("odd \"name\"\\", "127.0.0.1:1"))
            .routing(Routing::new("p").override_key("a key", "s"));
        let parsed: toml::Value = toml::from_str(&cfg.to_toml()).expect("valid TOML");
        let binds: Vec<&str> = (0..2)
            .map(|i| parsed["listener"][i]["bind"].as_str().unwrap())
            .collect();
        assert_ne!(binds[0], binds[1]);
        assert!(binds.iter().all(|b| b.starts_with("127.0.0.1:")));
        assert_eq!(
            parsed["pool"][0]["servers"][0]["name"].as_str(),
            Some("odd \"name\"\\")
        );
        assert_eq!(parsed["routing"]["overrides"]["a key"].as_str(), Some("s"));
        assert_eq!(
            parsed["admin"]["listen"].as_str(),
            Some(cfg.admin_addr().as_str())
        );
        // One server: written on one line.
        assert!(cfg.to_string().contains("servers = [{ name = "));
    }
}
