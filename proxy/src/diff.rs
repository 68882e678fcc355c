//! What a reload changes in the proxy, computed from the old and new config alone: no I/O, so the
//! table of cases below is the specification.
//!
//! A listening socket is identified by its address, not its listener's name: a listener renamed
//! on the same `bind` keeps its socket (and the connections waiting in its accept queue); a
//! listener moved to a new address gets a new socket and the old one closes. A server keeps its
//! health while its pool, name and address stay ([`crate::pool::Pool::build`] follows the same rule).

use crate::config::{PoolConfig, ProxyConfig};

/// One thing a reload does to the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A listener on an address no old listener had: bind it.
    Bind {
        /// Listener name.
        listener: String,
        /// Its address.
        bind: String,
    },
    /// The socket on `bind` now serves the listener `to` (was `from`).
    Rename {
        /// Old name.
        from: String,
        /// New name.
        to: String,
        /// The address, unchanged.
        bind: String,
    },
    /// Same name and address, other settings: new connections use them.
    UpdateListener(String),
    /// No new listener on this address: stop accepting; open connections carry on.
    Close {
        /// Old listener name.
        listener: String,
        /// Its address.
        bind: String,
    },
    /// A new pool: its servers start unchecked.
    AddPool(String),
    /// A pool gone; connections through it carry on.
    RemovePool(String),
    /// Pool settings other than its server list changed (balance, check, TLS, retries...).
    UpdatePool(String),
    /// A new server in a pool that stays.
    AddServer {
        /// Pool name.
        pool: String,
        /// Server name.
        server: String,
    },
    /// A server gone from a pool that stays; its health checker stops.
    RemoveServer {
        /// Pool name.
        pool: String,
        /// Server name.
        server: String,
    },
    /// Same name, new address: it is a different broker, so its health starts over.
    ReplaceServer {
        /// Pool name.
        pool: String,
        /// Server name.
        server: String,
    },
    /// Same name and address, other settings (backup, maxconn, check_port): health kept.
    UpdateServer {
        /// Pool name.
        pool: String,
        /// Server name.
        server: String,
    },
    /// `[routing]` added, changed or removed: new connections route by the new table.
    Routing,
    /// `[admin] listen` changed: the admin server keeps its address until a restart.
    AdminListenAtRestart,
}

/// Every change from `old` to `new`, listeners first, then pools, routing and admin.
pub fn diff(old: &ProxyConfig, new: &ProxyConfig) -> Vec<Change> {
    let mut out = Vec::new();
    for n in &new.listeners {
        match old.listeners.iter().find(|o| o.bind == n.bind) {
            None => out.push(Change::Bind {
                listener: n.name.clone(),
                bind: n.bind.clone(),
            }),
            Some(o) if o.name != n.name => out.push(Change::Rename {
                from: o.name.clone(),
                to: n.name.clone(),
                bind: n.bind.clone(),
            }),
            Some(o) if o != n => out.push(Change::UpdateListener(n.name.clone())),
            Some(_) => {}
        }
    }
    for o in &old.listeners {
        if !new.listeners.iter().any(|n| n.bind == o.bind) {
            out.push(Change::Close {
                listener: o.name.clone(),
                bind: o.bind.clone(),
            });
        }
    }
    for n in &new.pools {
        match old.pools.iter().find(|o| o.name == n.name) {
            None => out.push(Change::AddPool(n.name.clone())),
            Some(o) => diff_pool(o, n, &mut out),
        }
    }
    for o in &old.pools {
        if !new.pools.iter().any(|n| n.name == o.name) {
            out.push(Change::RemovePool(o.name.clone()));
        }
    }
    if old.routing != new.routing {
        out.push(Change::Routing);
    }
    if old.admin.as_ref().map(|a| &a.listen) != new.admin.as_ref().map(|a| &a.listen) {
        out.push(Change::AdminListenAtRestart);
    }
    out
}

fn diff_pool(old: &PoolConfig, new: &PoolConfig, out: &mut Vec<Change>) {
    let settings = |p: &PoolConfig| PoolConfig {
        servers: Vec::new(),
        ..p.clone()
    };
    if settings(old) != settings(new) {
        out.push(Change::UpdatePool(new.name.clone()));
    }
    let id = |server: &str| (new.name.clone(), server.to_string());
    for s in &new.servers {
        let (pool, server) = id(&s.name);
        match old.servers.iter().find(|o| o.name == s.name) {
            None => out.push(Change::AddServer { pool, server }),
            Some(o) if o.addr != s.addr => out.push(Change::ReplaceServer { pool, server }),
            Some(o) if o != s => out.push(Change::UpdateServer { pool, server }),
            Some(_) => {}
        }
    }
    for o in &old.servers {
        if !new.servers.iter().any(|s| s.name == o.name) {
            let (pool, server) = id(&o.name);
            out.push(Change::RemoveServer { pool, server });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Change::*;
    use super::*;

    /// A config from the `[[listener]]` / `[[pool]]` / `[routing]` TOML a user writes.
    fn cfg(toml_text: &str) -> ProxyConfig {
        #[derive(serde::Deserialize)]
        struct File {
            #[serde(default)]
            listener: Vec<crate::config::ListenerConfig>,
            #[serde(default)]
            pool: Vec<PoolConfig>,
            routing: Option<setgate_router::RoutingConfig>,
            admin: Option<crate::config::AdminConfig>,
        }
        let f: File = toml::from_str(toml_text).expect("test config parses");
        ProxyConfig {
            admin: f.admin,
            listeners: f.listener,
            pools: f.pool,
            routing: f.routing,
        }
    }

    const LISTENER: &str = r#"
        [[listener]]
        name = "amqp"
        bind = "127.0.0.1:5672"
        pool = "center"
    "#;
    const POOL: &str = r#"
        [[pool]]
        name = "center"
        servers = [{ name = "c1", addr = "127.0.0.1:5001" }, { name = "c2", addr = "127.0.0.1:5002" }]
    "#;

    fn s(x: &str) -> String {
        x.to_string()
    }

    #[test]
    fn the_reload_table() {
        let base = format!("{LISTENER}{POOL}");
        let cases: Vec<(&str, String, Vec<Change>)> = vec![
            ("unchanged", base.clone(), vec![]),
            (
                "listener renamed on the same address keeps its socket",
                base.replace("name = \"amqp\"", "name = \"amqp-2\""),
                vec![Rename {
                    from: s("amqp"),
                    to: s("amqp-2"),
                    bind: s("127.0.0.1:5672"),
                }],
            ),
            (
                "listener moved to another address",
                base.replace("127.0.0.1:5672", "127.0.0.1:5673"),
                vec![
                    Bind {
                        listener: s("amqp"),
                        bind: s("127.0.0.1:5673"),
                    },
                    Close {
                        listener: s("amqp"),
                        bind: s("127.0.0.1:5672"),
                    },
                ],
            ),
            (
                "listener setting changed",
                base.replace("pool = \"center\"", "pool = \"center\"\nmaxconn = 10"),
                vec![UpdateListener(s("amqp"))],
            ),
            (
                "listener added",
                format!("{base}[[listener]]\nname = \"b\"\nbind = \"127.0.0.1:5680\"\npool = \"center\"\n"),
                vec![Bind {
                    listener: s("b"),
                    bind: s("127.0.0.1:5680"),
                }],
            ),
            (
                "listener removed",
                POOL.to_string(),
                vec![Close {
                    listener: s("amqp"),
                    bind: s("127.0.0.1:5672"),
                }],
            ),
            (
                "server address changed: a new broker, health starts over",
                base.replace("127.0.0.1:5002", "127.0.0.1:5003"),
                vec![ReplaceServer {
                    pool: s("center"),
                    server: s("c2"),
                }],
            ),
            (
                "server setting changed: health kept",
                base.replace(
                    "addr = \"127.0.0.1:5002\"",
                    "addr = \"127.0.0.1:5002\", backup = true",
                ),
                vec![UpdateServer {
                    pool: s("center"),
                    server: s("c2"),
                }],
            ),
            (
                "server added and removed",
                base.replace("name = \"c2\"", "name = \"c3\""),
                vec![
                    AddServer {
                        pool: s("center"),
                        server: s("c3"),
                    },
                    RemoveServer {
                        pool: s("center"),
                        server: s("c2"),
                    },
                ],
            ),
            (
                "pool settings changed",
                base.replace("name = \"center\"\n", "name = \"center\"\nbalance = \"leastconn\"\n"),
                vec![UpdatePool(s("center"))],
            ),
            (
                "pool added",
                format!("{base}[[pool]]\nname = \"other\"\nservers = [{{ name = \"o1\", addr = \"127.0.0.1:6001\" }}]\n"),
                vec![AddPool(s("other"))],
            ),
            (
                "routing added",
                format!("{base}[routing]\ndefault = \"center\"\n"),
                vec![Routing],
            ),
            (
                "admin address changed",
                format!("{base}[admin]\nlisten = \"127.0.0.1:9999\"\n"),
                vec![AdminListenAtRestart],
            ),
        ];
        let old = cfg(&base);
        for (case, new, want) in cases {
            assert_eq!(diff(&old, &cfg(&new)), want, "case: {case}");
        }
    }

    #[test]
    fn two_listeners_swapping_addresses_keep_both_sockets() {
        let old = cfg(&format!(
            "{POOL}[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\npool = \"center\"\n[[listener]]\nname = \"b\"\nbind = \"127.0.0.1:2\"\npool = \"center\"\n"
        ));
        let new = cfg(&format!(
            "{POOL}[[listener]]\nname = \"b\"\nbind = \"127.0.0.1:1\"\npool = \"center\"\n[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:2\"\npool = \"center\"\n"
        ));
        assert_eq!(
            diff(&old, &new),
            vec![
                Rename {
                    from: s("a"),
                    to: s("b"),
                    bind: s("127.0.0.1:1")
                },
                Rename {
                    from: s("b"),
                    to: s("a"),
                    bind: s("127.0.0.1:2")
                },
            ]
        );
    }

    #[test]
    fn removed_pool_and_routing() {
        let old = cfg(&format!(
            "{LISTENER}{POOL}[routing]\ndefault = \"center\"\n"
        ));
        let new = cfg(LISTENER);
        assert_eq!(diff(&old, &new), vec![RemovePool(s("center")), Routing]);
    }
}
