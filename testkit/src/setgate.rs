//! setgate itself, run as a child process with a config file, the way users run it.

use crate::config::Config;
use crate::http::{self, Auth, Response};
use crate::net::wait_until;
use anyhow::{bail, Context};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// What setgate runs with: TOML text (`&str`, `&String`) or a [`Config`] builder.
pub trait ConfigText {
    /// The TOML, as it goes into the config file.
    fn toml_text(&self) -> String;
}

impl ConfigText for str {
    fn toml_text(&self) -> String {
        self.to_string()
    }
}

impl ConfigText for String {
    fn toml_text(&self) -> String {
        self.clone()
    }
}

impl ConfigText for Config {
    fn toml_text(&self) -> String {
        self.to_string()
    }
}

/// How to run setgate.
#[derive(Debug, Clone, Default)]
pub struct SetgateOptions {
    /// Run inside this network namespace (`ip netns exec`).
    pub netns: Option<String>,
    /// Extra command-line arguments after `run --config FILE`.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Do not print the config file at start and on reload (for programs with an audience).
    pub quiet: bool,
}

/// A running setgate process. Killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Setgate {
    /// The admin server's address, read from `[admin] listen` of the config.
    pub admin: SocketAddr,
    bin: PathBuf,
    opts: SetgateOptions,
    dir: PathBuf,
    child: Option<Child>,
}

impl Setgate {
    /// Writes `config` (TOML text or a [`crate::config::Config`]) to a file, starts
    /// `BIN run --config FILE` and waits until `/healthz` answers.
    ///
    /// The file is printed to stderr first (unless [`SetgateOptions::quiet`]): the test harness
    /// captures it and shows it when the test fails.
    pub async fn start(
        bin: impl AsRef<Path>,
        config: &(impl ConfigText + ?Sized),
    ) -> anyhow::Result<Setgate> {
        Setgate::start_with(bin, config, SetgateOptions::default()).await
    }

    /// [`Setgate::start`] with options.
    pub async fn start_with(
        bin: impl AsRef<Path>,
        config: &(impl ConfigText + ?Sized),
        opts: SetgateOptions,
    ) -> anyhow::Result<Setgate> {
        let config = config.toml_text();
        let admin = admin_addr(&config)?;
        let dir = crate::unique_dir("setgate");
        std::fs::write(dir.join("setgate.toml"), &config)?;
        if !opts.quiet {
            eprintln!(
                "---- setgate config ({}) ----\n{config}",
                dir.join("setgate.toml").display()
            );
        }
        let mut sg = Setgate {
            admin,
            bin: bin.as_ref().to_path_buf(),
            opts,
            dir,
            child: None,
        };
        sg.launch().await?;
        Ok(sg)
    }

    /// Path of the config file this instance runs with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("setgate.toml")
    }

    /// The config file as it is now (after any reload).
    pub fn config(&self) -> String {
        std::fs::read_to_string(self.config_path()).unwrap_or_default()
    }

    /// The address listener `name` accepts on: its `bind` from the config file, or, when that
    /// names port 0, the address setgate reports for it in `GET /api/listeners`.
    pub async fn addr(&self, listener: &str) -> anyhow::Result<SocketAddr> {
        let config: toml::Value = toml::from_str(&self.config()).context("config is not TOML")?;
        let bind: SocketAddr = config
            .get("listener")
            .and_then(|l| l.as_array())
            .and_then(|l| {
                l.iter()
                    .find(|l| l.get("name").and_then(|n| n.as_str()) == Some(listener))
            })
            .and_then(|l| l.get("bind"))
            .and_then(|b| b.as_str())
            .with_context(|| format!("no listener {listener:?} with a bind in the config"))?
            .parse()?;
        if bind.port() != 0 {
            return Ok(bind);
        }
        // `addr` is null until the socket is bound.
        let what = format!("listener {listener:?}'s addr in /api/listeners");
        let addr = wait_until(&what, Duration::from_secs(10), || async {
            let v = self.get_json("/api/listeners").await.ok()?;
            let l = v["listeners"]
                .as_array()?
                .iter()
                .find(|l| l["name"] == listener)?;
            l["addr"].as_str()?.parse::<SocketAddr>().ok()
        })
        .await?;
        Ok(addr)
    }

    /// The port listener `name` accepts on (see [`Setgate::addr`]).
    pub async fn port(&self, listener: &str) -> anyhow::Result<u16> {
        Ok(self.addr(listener).await?.port())
    }

    /// Everything the process printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("setgate.log")).unwrap_or_default()
    }

    /// The OS pid, while running.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("setgate.log"))?;
        let config = self.config_path();
        let mut cmd = match &self.opts.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        cmd.arg("run")
            .arg("--config")
            .arg(&config)
            .args(&self.opts.args)
            .env(
                "RUST_LOG",
                std::env::var("SETGATE_TEST_LOG").unwrap_or_else(|_| "info,lapin=off".into()),
            )
            .envs(self.opts.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.child = Some(
            cmd.spawn()
                .with_context(|| format!("spawn {}", self.bin.display()))?,
        );
        if self.opts.netns.is_some() {
            return Ok(()); // the admin port is inside the namespace; the caller checks readiness there
        }
        let admin = self.admin;
        let result = wait_until("setgate /healthz", Duration::from_secs(20), || {
            let exited = self.has_exited();
            async move {
                if exited {
                    return Some(false);
                }
                match http::get(admin, "/healthz").await {
                    Ok(r) if r.status == 200 => Some(true),
                    _ => None,
                }
            }
        })
        .await;
        match result {
            Ok(true) => Ok(()),
            Ok(false) => bail!(
                "setgate exited at start:\n{}\n---- config ----\n{}",
                self.log(),
                self.config()
            ),
            Err(e) => Err(e).with_context(|| {
                format!(
                    "setgate log:\n{}\n---- config ----\n{}",
                    self.log(),
                    self.config()
                )
            }),
        }
    }

    /// True once the process has exited.
    pub fn has_exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => !matches!(c.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// Waits for the process to exit and returns its exit code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<Option<i32>> {
        wait_until("setgate to exit", timeout, || {
            let exited = self.has_exited();
            async move { exited.then_some(()) }
        })
        .await?;
        Ok(self
            .child
            .take()
            .and_then(|mut c| c.wait().ok())
            .and_then(|s| s.code()))
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let admin = self.admin;
        wait_until("setgate /readyz", Duration::from_secs(30), || async move {
            match http::get(admin, "/readyz").await {
                Ok(r) if r.status == 200 => Some(()),
                _ => None,
            }
        })
        .await
        .with_context(|| format!("setgate log:\n{}", self.log()))
    }

    /// `GET` on the admin server.
    pub async fn get(&self, path: &str) -> anyhow::Result<Response> {
        http::get(self.admin, path).await
    }

    /// `GET` on the admin server, parsed as JSON; fails unless the status is 200.
    pub async fn get_json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let r = self.get(path).await?;
        if r.status != 200 {
            bail!("GET {path}: {} {}", r.status, r.body);
        }
        r.json()
    }

    /// `POST` on the admin server with an optional bearer token.
    pub async fn post(
        &self,
        path: &str,
        body: serde_json::Value,
        token: Option<&str>,
    ) -> anyhow::Result<Response> {
        let auth = token.map(Auth::Bearer).unwrap_or(Auth::None);
        http::request("POST", self.admin, path, auth, Some(body.to_string())).await
    }

    /// The value of one Prometheus sample from `/metrics`: `name{labels}` must match exactly the
    /// text before the value, e.g. `setgate_server_up{pool="p",server="s1"}`.
    pub async fn metric(&self, series: &str) -> anyhow::Result<Option<f64>> {
        let body = self.get("/metrics").await?.body;
        Ok(body.lines().find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok()).flatten()
        }))
    }

    fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) on our own child process.
            unsafe { libc::kill(pid, sig) };
        }
    }

    /// Rewrites the config file and sends SIGHUP.
    pub fn reload(&self, config: &(impl ConfigText + ?Sized)) -> anyhow::Result<()> {
        let config = config.toml_text();
        if !self.opts.quiet {
            eprintln!("---- setgate config, reloaded ----\n{config}");
        }
        std::fs::write(self.config_path(), config)?;
        self.signal(libc::SIGHUP);
        Ok(())
    }

    /// SIGTERM: graceful stop.
    pub fn sigterm(&self) {
        self.signal(libc::SIGTERM);
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// Starts the same binary with the same (current) config file again, after a kill or stop.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if !self.has_exited() {
            bail!("setgate is still running");
        }
        self.launch().await
    }
}

impl Drop for Setgate {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "---- setgate config ({}) ----\n{}\n---- setgate log ----\n{}",
                self.config_path().display(),
                self.config(),
                self.log()
            );
        } else if std::env::var_os("SETGATE_KEEP_NODES").is_some() {
            eprintln!("setgate files kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn admin_addr(config: &str) -> anyhow::Result<SocketAddr> {
    let v: toml::Value = toml::from_str(config).context("test config is not TOML")?;
    let listen = v
        .get("admin")
        .and_then(|a| a.get("listen"))
        .and_then(|l| l.as_str())
        .context("test config needs [admin] listen")?;
    Ok(listen.parse()?)
}
