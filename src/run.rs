//! `setgate run`: start everything the file configures, reload on SIGHUP, drain on SIGTERM/SIGINT.

use crate::load::{load_blocking, Loaded};
use crate::reload::{reload, Running};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use setgate_federation::{Control, Federation, UnitKind};
use setgate_proxy::admin::ActionFn;
use setgate_proxy::{AdminExtensions, Proxy};
use setgate_vrrp::Vrrp;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

/// Runs until SIGTERM/SIGINT; returns an error only when start-up fails.
pub async fn run(path: PathBuf) -> anyhow::Result<()> {
    // The recorder comes first: building the snapshot registers the listener and server series,
    // and a series registered before it would count into nothing.
    let metrics = install_metrics()?;
    let Loaded {
        cfg,
        proxy: snapshot,
    } = load_blocking(path.clone(), None)
        .await
        .map_err(|errs| crate::report_errors(&path, &errs))?;
    raise_fd_limit();

    let proxy = Proxy::start(snapshot)
        .await
        .map_err(|errs| crate::report_errors(&path, &errs))?;
    let federation = Federation::start(&cfg.messaging());
    let vrrp = match &cfg.vrrp {
        Some(v) => Some(
            Vrrp::start(v.clone(), Arc::new(proxy.ready_probe()))
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        ),
        None => None,
    };
    let vrrp_status: setgate_proxy::admin::JsonFn = match &vrrp {
        Some(v) => v.status_fn(),
        None => Arc::new(|| serde_json::json!({ "enabled": false })),
    };
    proxy.serve_admin(AdminExtensions {
        metrics: Some(Arc::new(move || metrics.render())),
        json: vec![
            ("/api/links".into(), federation.status_fn()),
            ("/api/shovels".into(), federation.shovels_status_fn()),
            ("/api/vrrp".into(), vrrp_status),
        ],
        actions: vec![
            ("/api/links".into(), control(&federation, UnitKind::Link)),
            (
                "/api/shovels".into(),
                control(&federation, UnitKind::Shovel),
            ),
        ],
    });
    info!(config = %path.display(), "setgate is running");

    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let running = Running {
        proxy: &proxy,
        federation: &federation,
        vrrp: vrrp.as_ref(),
    };
    let mut current = cfg;
    loop {
        tokio::select! {
            _ = hup.recv() => current = reload(&path, current, &running).await,
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

/// `POST /api/{links|shovels}/NAME/{pause|resume|restart}`.
fn control(federation: &Federation, kind: UnitKind) -> ActionFn {
    let federation = federation.clone();
    Arc::new(move |args: Vec<String>| {
        let federation = federation.clone();
        Box::pin(async move {
            let [name, action] = args.as_slice() else {
                return (
                    404,
                    serde_json::json!({"error": format!("use POST /api/{}s/NAME/pause, resume or restart", kind.as_str())}),
                );
            };
            let Some(action) = Control::parse(action) else {
                return (
                    400,
                    serde_json::json!({"error": format!("\"{action}\" is not one of pause, resume, restart")}),
                );
            };
            match federation.control(kind, name, action).await {
                Ok(status) => (
                    200,
                    serde_json::json!({"ok": true, "state": status["state"], "status": status}),
                ),
                Err(e) => (404, serde_json::json!({"error": e.to_string()})),
            }
        })
    })
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

/// Tunes glibc's malloc before any thread starts, so memory goes back to the OS when the thing
/// that used it goes away (an edge must stay flat for months):
///
/// - Arenas capped at two. By default glibc gives threads up to eight arenas per core, each
///   keeping its own freed pages: lapin's I/O threads, the tokio workers and short-lived
///   connection threads then spread a steady workload over many arenas, and RSS creeps up with
///   every fault and reconnect. Two arenas keep the allocation rate of two busy threads without
///   contention to speak of.
/// - Blocks of 1 MiB and more always mapped on their own. Every lapin connection (each link's
///   upstream and downstream) holds two I/O buffers of 32 frames at the broker's `frame_max`,
///   4 MiB each with RabbitMQ's default. glibc's default threshold is dynamic: the first such
///   buffer freed raises it to 4 MiB, and from then on every reconnect's buffers come from the
///   heap, where freed space stays in RSS until the top of the heap is free (a kill -9-ed
///   setgate was seen at +8 to +17 MB against its predecessor doing the same work). A fixed
///   threshold turns that off: the buffers are mapped on connect and unmapped on close. Of
///   what is allocated per message, only bodies of 1 MiB and more pay a map and an unmap,
///   small next to copying them.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets tunables of the allocator; called before any other thread.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
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
