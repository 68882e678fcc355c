//! Load and build: the one path from a file to something ready to run, taken by `setgate check`,
//! `setgate route`, start-up and every SIGHUP, so what `check` accepts, `run` accepts.
//!
//! It reads files (the config, TLS files, the token file) and builds the routing table: run it
//! off the async runtime ([`load_blocking`]).

use crate::config::Config;
use setgate_proxy::Snapshot;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A checked config and the proxy snapshot built from it.
#[derive(Debug)]
pub struct Loaded {
    /// The whole file.
    pub cfg: Config,
    /// Listeners, pools, router and token, ready to serve.
    pub proxy: Snapshot,
}

/// Reads, checks and builds `path`; every problem found is returned at once. With `prev` (the
/// snapshot in use), servers and listeners that stay keep their health and counters.
pub fn load(path: &Path, prev: Option<&Snapshot>) -> Result<Loaded, Vec<String>> {
    let cfg = Config::read(path)?;
    let others = cfg.validate();
    match setgate_proxy::build(cfg.proxy(), prev) {
        Ok(proxy) if others.is_empty() => Ok(Loaded { cfg, proxy }),
        Ok(_) => Err(others),
        Err(mut errs) => {
            errs.extend(others);
            Err(errs)
        }
    }
}

/// [`load`] on tokio's blocking pool, so a slow disk or a large ring never stalls connections.
pub async fn load_blocking(
    path: PathBuf,
    prev: Option<Arc<Snapshot>>,
) -> Result<Loaded, Vec<String>> {
    tokio::task::spawn_blocking(move || load(&path, prev.as_deref()))
        .await
        .unwrap_or_else(|e| Err(vec![format!("loading the config failed: {e}")]))
}
