//! Real RabbitMQ nodes on loopback, one per "cluster" or "datacenter" of a test.
//!
//! Each node is Debian's `rabbitmq-server` started directly from `/usr/lib/rabbitmq/bin` (the
//! `/usr/sbin` wrapper would switch to the `rabbitmq` user and its fixed directories), with its own
//! node name, AMQP / distribution / management ports and data directory. The node runs in its own
//! process group so that kill -9 and SIGSTOP reach the Erlang VM and its helpers at once.

use crate::http::{self, Auth, Response};
use crate::net::wait_until;
use anyhow::{bail, Context};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const RABBITMQ_BIN: &str = "/usr/lib/rabbitmq/bin";

/// How a node is started. `Default` gives a node with the management plugin on 127.0.0.1.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Enable `rabbitmq_management` (needed by [`Node::mgmt`] and the http health check).
    pub management: bool,
    /// More plugins to enable, e.g. `rabbitmq_federation`.
    pub plugins: Vec<String>,
    /// Lines appended to `rabbitmq.conf` (new-style sysctl format).
    pub extra_config: String,
    /// Run the node inside this network namespace (the caller creates it).
    pub netns: Option<String>,
    /// Address the AMQP and management listeners bind.
    pub ip: String,
    /// Fixed ports `(amqp, management, distribution)` instead of free ones (the demo's nodes are
    /// named in `configs/`).
    pub ports: Option<(u16, u16, u16)>,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            management: true,
            plugins: Vec::new(),
            extra_config: String::new(),
            netns: None,
            ip: "127.0.0.1".into(),
            ports: None,
        }
    }
}

/// One running (or killed, or stopped) RabbitMQ node.
#[derive(Debug)]
pub struct Node {
    /// Erlang node name, e.g. `sg-1234-0@localhost`.
    pub name: String,
    /// AMQP 0-9-1 port.
    pub amqp_port: u16,
    /// Management HTTP port (0 without the management plugin).
    pub mgmt_port: u16,
    /// Erlang distribution port.
    pub dist_port: u16,
    opts: NodeOptions,
    dir: PathBuf,
    child: Option<Child>,
}

impl Node {
    /// Starts a node with default options and waits until it accepts AMQP.
    pub async fn start() -> anyhow::Result<Node> {
        Node::start_with(NodeOptions::default()).await
    }

    /// Starts a node and waits until it accepts AMQP (and management, when enabled).
    pub async fn start_with(opts: NodeOptions) -> anyhow::Result<Node> {
        prepare_home()?;
        let dir = crate::unique_dir("node");
        let id = dir.file_name().unwrap().to_string_lossy().replace('-', "_");
        let (amqp_port, mgmt_port, dist_port) = match opts.ports {
            Some(p) => p,
            None => (
                crate::free_port(),
                if opts.management {
                    crate::free_port()
                } else {
                    0
                },
                crate::free_port(),
            ),
        };
        let mut node = Node {
            name: format!("{id}@localhost"),
            amqp_port,
            mgmt_port,
            dist_port,
            opts,
            dir,
            child: None,
        };
        node.write_config()?;
        node.spawn_watchdog()?;
        node.launch().await?;
        Ok(node)
    }

    /// `127.0.0.1:PORT` (or the node's own address) of the AMQP listener.
    pub fn amqp_addr(&self) -> SocketAddr {
        format!("{}:{}", self.opts.ip, self.amqp_port)
            .parse()
            .unwrap()
    }

    /// The management API address.
    pub fn mgmt_addr(&self) -> SocketAddr {
        format!("{}:{}", self.opts.ip, self.mgmt_port)
            .parse()
            .unwrap()
    }

    /// `amqp://guest:guest@IP:PORT/%2f`.
    pub fn amqp_uri(&self) -> String {
        self.uri_for("guest", "guest")
    }

    /// An AMQP URI for the given user on the default vhost.
    pub fn uri_for(&self, user: &str, pass: &str) -> String {
        format!("amqp://{user}:{pass}@{}/%2f", self.amqp_addr())
    }

    /// The node's data directory (logs are under `log/`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The OS pid of the node's process group leader, while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    fn write_config(&self) -> anyhow::Result<()> {
        let mut conf = format!(
            "listeners.tcp.default = {ip}:{port}\nloopback_users = none\n\
             collect_statistics_interval = 1000\nlog.file.level = info\n",
            ip = self.opts.ip,
            port = self.amqp_port
        );
        if self.opts.management {
            conf += &format!(
                "management.tcp.port = {}\nmanagement.tcp.ip = {}\n",
                self.mgmt_port, self.opts.ip
            );
        }
        conf += &self.opts.extra_config;
        conf.push('\n');
        std::fs::write(self.dir.join("rabbitmq.conf"), conf)?;
        let mut plugins = self.opts.plugins.clone();
        if self.opts.management {
            plugins.push("rabbitmq_management".into());
        }
        std::fs::write(
            self.dir.join("enabled_plugins"),
            format!("[{}].\n", plugins.join(",")),
        )?;
        Ok(())
    }

    fn env(&self) -> Vec<(String, String)> {
        let d = self.dir.display();
        vec![
            ("HOME".into(), crate::run_dir().display().to_string()),
            ("RABBITMQ_NODENAME".into(), self.name.clone()),
            ("RABBITMQ_NODE_PORT".into(), self.amqp_port.to_string()),
            ("RABBITMQ_NODE_IP_ADDRESS".into(), self.opts.ip.clone()),
            ("RABBITMQ_DIST_PORT".into(), self.dist_port.to_string()),
            ("RABBITMQ_MNESIA_BASE".into(), format!("{d}/mnesia")),
            ("RABBITMQ_LOG_BASE".into(), format!("{d}/log")),
            ("RABBITMQ_CONFIG_FILE".into(), format!("{d}/rabbitmq.conf")),
            (
                "RABBITMQ_ENABLED_PLUGINS_FILE".into(),
                format!("{d}/enabled_plugins"),
            ),
            ("RABBITMQ_PID_FILE".into(), format!("{d}/pid")),
            (
                "RABBITMQ_CONF_ENV_FILE".into(),
                format!("{d}/rabbitmq-env.conf"),
            ),
            (
                "RABBITMQ_ADVANCED_CONFIG_FILE".into(),
                format!("{d}/advanced.config"),
            ),
            // Several idle nodes share two cores: schedulers must not spin while waiting for work.
            (
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS".into(),
                "+sbwt none +sbwtdcpu none +sbwtdio none".into(),
            ),
        ]
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = match &self.opts.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
            None => Command::new(program),
        };
        cmd.envs(self.env());
        cmd
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        let out = std::fs::File::create(self.dir.join("server.out"))?;
        let mut cmd = self.command(&format!("{RABBITMQ_BIN}/rabbitmq-server"));
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .spawn()
            .context("spawn rabbitmq-server (apt-get install rabbitmq-server)")?;
        std::fs::write(self.dir.join("pgid"), child.id().to_string())?;
        self.child = Some(child);
        self.wait_booted().await
    }

    async fn wait_booted(&mut self) -> anyhow::Result<()> {
        let timeout = Duration::from_secs(90);
        let addr = self.amqp_addr();
        if let Some(ns) = self.opts.netns.clone() {
            // The node is in another namespace: knock on its AMQP port from inside that namespace.
            // (`rabbitmqctl await_startup` fails at once while the node is not yet registered
            // with epmd, which is most of its boot.)
            let what = format!(
                "node {} to accept AMQP on {addr} in namespace {ns}",
                self.name
            );
            let result = wait_until(&what, timeout, || {
                let exited = self.has_exited();
                let ns = ns.clone();
                async move {
                    if exited {
                        return Some(false);
                    }
                    crate::netns::tcp_connect_in(&ns, addr)
                        .await
                        .ok()
                        .map(|_| true)
                }
            })
            .await;
            return match result {
                Ok(true) => Ok(()),
                Ok(false) => bail!(
                    "node {} exited during boot: {}",
                    self.name,
                    self.describe_failure()
                ),
                Err(e) => Err(e).with_context(|| self.describe_failure()),
            };
        }
        let mgmt = self.opts.management.then(|| self.mgmt_addr());
        let result = wait_until(
            &format!("node {} to accept AMQP on {addr}", self.name),
            timeout,
            || {
                let exited = self.has_exited();
                async move {
                    if exited {
                        return Some(false);
                    }
                    if !crate::net::accepts(addr).await {
                        return None;
                    }
                    match mgmt {
                        None => Some(true),
                        Some(m) => match http::request(
                            "GET",
                            m,
                            "/api/overview",
                            Auth::Basic("guest", "guest"),
                            None,
                        )
                        .await
                        {
                            Ok(r) if r.status == 200 => Some(true),
                            _ => None,
                        },
                    }
                }
            },
        )
        .await;
        match result {
            Ok(true) => Ok(()),
            Ok(false) => bail!(
                "node {} exited during boot: {}",
                self.name,
                self.describe_failure()
            ),
            Err(e) => Err(e).with_context(|| self.describe_failure()),
        }
    }

    fn has_exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => !matches!(c.try_wait(), Ok(None)),
            None => true,
        }
    }

    fn describe_failure(&self) -> String {
        let out = std::fs::read_to_string(self.dir.join("server.out")).unwrap_or_default();
        let tail: Vec<&str> = out.lines().rev().take(30).collect();
        format!(
            "node {} in {}; last lines of its output:\n{}",
            self.name,
            self.dir.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }

    /// A watchdog process that kills the node and removes its directory once this test process is
    /// gone, so nodes shared through a `static` (never dropped) do not outlive their test binary.
    fn spawn_watchdog(&self) -> anyhow::Result<()> {
        let keep = std::env::var_os("SETGATE_KEEP_NODES").is_some();
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             kill -9 -$(cat {dir}/pgid) 2>/dev/null; {rm}",
            pid = std::process::id(),
            dir = self.dir.display(),
            rm = if keep {
                String::new()
            } else {
                format!("rm -rf {}", self.dir.display())
            }
        );
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd.spawn().context("spawn node watchdog")?;
        Ok(())
    }

    fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) with a negative pid signals our own child's process group.
            unsafe { libc::kill(-pid, sig) };
        }
    }

    /// kill -9 the whole node (Erlang VM and helpers), as a crashed machine would.
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// SIGSTOP the node: its sockets stay open and the kernel still accepts connections, but the
    /// broker answers nothing.
    pub fn sigstop(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT after [`Node::sigstop`].
    pub fn sigcont(&self) {
        self.signal(libc::SIGCONT);
    }

    /// Stops the node gracefully (SIGTERM) and waits for it to exit.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.signal(libc::SIGTERM);
        let name = self.name.clone();
        wait_until(
            &format!("node {name} to stop"),
            Duration::from_secs(60),
            || {
                let exited = self.has_exited();
                async move { exited.then_some(()) }
            },
        )
        .await?;
        self.child = None;
        Ok(())
    }

    /// Starts the node again on the same ports with the same data (after kill9 or stop).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() && !self.has_exited() {
            bail!(
                "node {} is still running; kill9() or stop() it first",
                self.name
            );
        }
        self.launch().await
    }

    /// Runs `rabbitmqctl -n NODE ARGS..` and returns its standard output.
    pub async fn ctl(&self, args: &[&str]) -> anyhow::Result<String> {
        self.ctl_owned(args.iter().map(|s| s.to_string()).collect())
            .await
    }

    async fn ctl_owned(&self, args: Vec<String>) -> anyhow::Result<String> {
        let mut cmd: tokio::process::Command =
            self.command(&format!("{RABBITMQ_BIN}/rabbitmqctl")).into();
        cmd.arg("-n")
            .arg(&self.name)
            .args(&args)
            .stdin(Stdio::null());
        let out = cmd.output().await.context("run rabbitmqctl")?;
        if !out.status.success() {
            bail!(
                "rabbitmqctl -n {} {} failed: {}{}",
                self.name,
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A management API request as guest/guest.
    pub async fn mgmt(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<Response> {
        http::request(
            method,
            self.mgmt_addr(),
            path,
            Auth::Basic("guest", "guest"),
            body.map(|b| b.to_string()),
        )
        .await
    }

    /// Creates users with full permissions on `/` in one definitions import.
    pub async fn add_users(&self, users: &[(String, String)]) -> anyhow::Result<()> {
        let defs = serde_json::json!({
            "users": users.iter().map(|(u, p)| serde_json::json!({"name": u, "password": p, "tags": ""})).collect::<Vec<_>>(),
            "permissions": users.iter().map(|(u, _)| serde_json::json!({"user": u, "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"})).collect::<Vec<_>>(),
        });
        let r = self.mgmt("POST", "/api/definitions", Some(defs)).await?;
        if !(200..300).contains(&r.status) {
            bail!(
                "importing users on {} failed: {} {}",
                self.name,
                r.status,
                r.body
            );
        }
        Ok(())
    }

    /// The user name of every AMQP connection the node has now (from its connection tracking,
    /// which is exact at once, unlike the sampled management statistics).
    pub async fn connection_users(&self) -> anyhow::Result<Vec<String>> {
        let out = self
            .ctl(&["list_connections", "user", "--silent", "--no-table-headers"])
            .await?;
        Ok(out
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect())
    }

    /// When the node accepted each AMQP connection of one of `users`, in Unix milliseconds on
    /// its own clock, earliest first.
    pub async fn connected_at(&self, users: &[&str]) -> anyhow::Result<Vec<u64>> {
        let out = self
            .ctl(&[
                "list_connections",
                "user",
                "connected_at",
                "--silent",
                "--no-table-headers",
            ])
            .await?;
        let mut at: Vec<u64> = out
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let user = f.next()?;
                users
                    .contains(&user)
                    .then(|| f.next()?.parse().ok())
                    .flatten()
            })
            .collect();
        at.sort_unstable();
        Ok(at)
    }

    /// How many AMQP connections the node has now.
    pub async fn connection_count(&self) -> anyhow::Result<usize> {
        Ok(self.connection_users().await?.len())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
        if std::env::var_os("SETGATE_KEEP_NODES").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Three (or N) nodes joined into one real RabbitMQ cluster with `rabbitmqctl join_cluster`.
#[derive(Debug)]
pub struct Cluster {
    /// The members; `nodes[0]` is the one the others joined.
    pub nodes: Vec<Node>,
}

impl Cluster {
    /// Starts `n` nodes and joins nodes 1.. to node 0.
    pub async fn start(n: usize) -> anyhow::Result<Cluster> {
        let nodes: Vec<Node> = futures_util::future::join_all((0..n).map(|_| Node::start()))
            .await
            .into_iter()
            .collect::<anyhow::Result<_>>()?;
        let first = nodes[0].name.clone();
        for node in &nodes[1..] {
            node.ctl(&["stop_app"]).await?;
            node.ctl(&["join_cluster", &first]).await?;
            node.ctl(&["start_app"]).await?;
        }
        for node in &nodes {
            node.ctl(&["await_startup"]).await?;
        }
        Ok(Cluster { nodes })
    }
}

/// One Erlang cookie for every node and every `rabbitmqctl` of this run, so the CLI can reach the
/// nodes and nodes can join each other.
fn prepare_home() -> anyhow::Result<()> {
    let home = crate::run_dir();
    std::fs::create_dir_all(&home)?;
    let cookie = home.join(".erlang.cookie");
    if !cookie.exists() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = home.join(format!(".erlang.cookie.{}", std::process::id()));
        std::fs::write(&tmp, "SETGATETESTCOOKIE")?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o400))?;
        // rename is atomic: parallel test binaries never see a half-written cookie.
        let _ = std::fs::rename(&tmp, &cookie);
    }
    Ok(())
}
