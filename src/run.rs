//! `setgate run`: start everything the file configures, reload on SIGHUP, drain on SIGTERM/SIGINT.

use crate::config::Config;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use setgate_federation::Federation;
use setgate_proxy::{AdminExtensions, Proxy};
use setgate_vrrp::Vrrp;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

/// Runs until SIGTERM/SIGINT; returns an error only when start-up fails.
pub async fn run(path: PathBuf) -> anyhow::Result<()> {
    let cfg = Config::load(&path).map_err(|errs| crate::report_errors(&path, &errs))?;
    raise_fd_limit();
    let metrics = install_metrics()?;

    let federation = Federation::start(cfg.federation.clone());
    let vrrp_status = Arc::new(std::sync::Mutex::new(None::<setgate_proxy::admin::JsonFn>));
    let ext = AdminExtensions {
        metrics: Some(Arc::new(move || metrics.render())),
        json: vec![
            ("/api/links".into(), federation.status_fn()),
            ("/api/vrrp".into(), {
                let vrrp_status = vrrp_status.clone();
                Arc::new(move || match vrrp_status.lock().unwrap().as_ref() {
                    Some(f) => f(),
                    None => serde_json::json!({ "enabled": false }),
                })
            }),
        ],
    };
    let proxy = Proxy::start(cfg.proxy(), ext)
        .await
        .map_err(|errs| crate::report_errors(&path, &errs))?;
    let vrrp = match &cfg.vrrp {
        Some(v) => {
            let vrrp = Vrrp::start(v.clone(), Arc::new(proxy.ready_probe()))
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            *vrrp_status.lock().unwrap() = Some(vrrp.status_fn());
            Some(vrrp)
        }
        None => None,
    };
    info!(config = %path.display(), "setgate is running");

    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut current = cfg;
    loop {
        tokio::select! {
            _ = hup.recv() => current = reload(&path, current, &proxy, &federation, vrrp.as_ref()).await,
            _ = term.recv() => { info!("SIGTERM: draining"); break }
            _ = int.recv() => { info!("SIGINT: draining"); break }
        }
    }
    // Step down first so the backup takes the virtual IP while we drain.
    if let Some(v) = vrrp {
        v.shutdown().await;
    }
    let grace = current.shutdown_grace;
    tokio::join!(proxy.shutdown(grace), federation.shutdown(grace));
    info!("stopped");
    Ok(())
}

/// SIGHUP: re-read the file; swap it in if valid, otherwise log every error and keep the old one.
///
/// The parts that can refuse (VRRP: some settings need a restart; the proxy: a new listener that
/// cannot bind) go first, so a refusal leaves everything as it was. Returns the config now running.
async fn reload(
    path: &Path,
    current: Config,
    proxy: &Proxy,
    federation: &Federation,
    vrrp: Option<&Vrrp>,
) -> Config {
    info!(config = %path.display(), "SIGHUP: reloading");
    let refuse = |errs: Vec<String>, current: Config| {
        for e in &errs {
            error!("{e}");
        }
        warn!(
            errors = errs.len(),
            "reload refused; still running on the previous config"
        );
        current
    };
    let mut new = match Config::load(path) {
        Ok(c) => c,
        Err(errs) => return refuse(errs, current),
    };
    let vrrp_changed = new.vrrp != current.vrrp;
    match (vrrp, &new.vrrp) {
        (Some(v), Some(cfg)) if vrrp_changed => {
            if let Err(errs) = v.reload(cfg.clone()) {
                return refuse(errs, current);
            }
        }
        (None, None) | (Some(_), Some(_)) => {}
        _ => {
            warn!("adding or removing the [vrrp] section takes effect at the next restart");
            new.vrrp = current.vrrp.clone();
        }
    }
    if let Err(errs) = proxy.reload(new.proxy()) {
        if let (Some(v), Some(old)) = (vrrp, &current.vrrp) {
            if vrrp_changed {
                // Put VRRP back as it was: the reload as a whole did not happen.
                let _ = v.reload(old.clone());
            }
        }
        return refuse(errs, current);
    }
    if new.federation != current.federation {
        federation.reload(new.federation.clone()).await;
    }
    info!("reloaded");
    new
}

fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".into()),
            &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ],
        )?
        .install_recorder()?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// Raises the soft open-files limit to the hard limit, as HAProxy does: every proxied connection
/// takes two descriptors and the default soft limit (1024) is far below what an edge needs.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read the struct we pass and nothing else.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let wanted = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
                warn!(soft = lim.rlim_cur, "could not raise the open files limit");
            }
        }
    }
}
