//! [`Federation`]: the set of running links, started, reloaded and stopped as a whole.

use crate::config::FederationConfig;
use crate::flow::FlowHandle;
use crate::plan::{plans, Change as LinkChange, LinkPlan};
use crate::status::LinkStatus;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a link that a reload restarts or removes may take to drain.
const RELOAD_GRACE: Duration = Duration::from_secs(10);
/// Beyond the grace: time to send the last acks and close both connections.
const CLOSE_MARGIN: Duration = Duration::from_secs(5);

/// One running link.
#[derive(Debug)]
struct RunningLink {
    plan: LinkPlan,
    flows: Vec<FlowHandle>,
    status: Arc<LinkStatus>,
    /// A stand-in showing the status of a link that is draining after a reload.
    shadow: bool,
}

impl RunningLink {
    fn start(plan: LinkPlan) -> RunningLink {
        let flows: Vec<FlowHandle> = plan.flows().into_iter().map(FlowHandle::spawn).collect();
        let status = Arc::new(LinkStatus {
            name: plan.name.clone(),
            downstream: plan.link.downstream.name.clone(),
            downstream_uris: plan
                .link
                .downstream
                .uris
                .iter()
                .map(|u| u.masked().to_string())
                .collect(),
            flows: flows.iter().map(|f| f.status.clone()).collect(),
        });
        tracing::info!(link = %plan.name, flows = flows.len(), "federation link started");
        RunningLink {
            plan,
            flows,
            status,
            shadow: false,
        }
    }

    fn shadow(&self) -> RunningLink {
        RunningLink {
            plan: self.plan.clone(),
            flows: Vec::new(),
            status: self.status.clone(),
            shadow: true,
        }
    }

    async fn stop(self, grace: Duration) {
        for f in &self.flows {
            f.request_stop(grace);
        }
        futures_util::future::join_all(
            self.flows.into_iter().map(|f| f.join(grace + CLOSE_MARGIN)),
        )
        .await;
    }
}

/// The running federation links.
///
/// The link list is shared with the status closure handed to the admin server; the `Mutex` is
/// held only to read or swap entries, never across an await.
#[derive(Debug)]
pub struct Federation {
    links: Arc<Mutex<Vec<RunningLink>>>,
}

impl Federation {
    /// Starts every link of `cfg` on the current tokio runtime. Never fails: a link that cannot
    /// connect or set up reports why in its status and retries after its `reconnect_delay`.
    pub fn start(cfg: FederationConfig) -> Federation {
        let links = plans(&cfg).into_iter().map(RunningLink::start).collect();
        Federation {
            links: Arc::new(Mutex::new(links)),
        }
    }

    /// A closure returning `{"links": [...]}` for `GET /api/links`; it follows reloads.
    pub fn status_fn(&self) -> Arc<dyn Fn() -> serde_json::Value + Send + Sync> {
        let links = self.links.clone();
        Arc::new(move || {
            let statuses: Vec<Arc<LinkStatus>> =
                lock(&links).iter().map(|l| l.status.clone()).collect();
            json!({ "links": statuses.iter().map(|s| s.json()).collect::<Vec<_>>() })
        })
    }

    /// Applies a new, validated config with the link changes [`crate::diff`] computed for it:
    /// links that restart or stop are stopped cleanly (their unconfirmed messages stay upstream),
    /// new ones start; kept links keep their connections.
    pub async fn apply(&self, cfg: FederationConfig, changes: &[LinkChange]) {
        let new = plans(&cfg);
        let current = std::mem::take(&mut *lock(&self.links));
        let (mut kept, mut stopping) = (Vec::new(), Vec::new());
        for link in current {
            if changes.contains(&LinkChange::Keep(link.plan.name.clone())) {
                kept.push(link);
            } else {
                tracing::info!(link = %link.plan.name, "federation link stopping for reload");
                stopping.push(link);
            }
        }
        // While they drain, stopping links still show in the status (with no flows to stop).
        lock(&self.links).extend(
            kept.into_iter()
                .chain(stopping.iter().map(RunningLink::shadow)),
        );
        futures_util::future::join_all(stopping.into_iter().map(|l| l.stop(RELOAD_GRACE))).await;
        let mut links = lock(&self.links);
        let mut current = std::mem::take(&mut *links);
        current.retain(|l| !l.shadow);
        *links = new
            .into_iter()
            .map(
                |plan| match current.iter().position(|l| l.plan.name == plan.name) {
                    Some(i) => current.remove(i),
                    None => RunningLink::start(plan),
                },
            )
            .collect();
    }

    /// Stops every link: stop consuming, wait up to `grace` for outstanding confirms, ack the
    /// confirmed messages, close. Whatever was not confirmed stays in the upstream queues.
    pub async fn shutdown(self, grace: Duration) {
        let links = std::mem::take(&mut *lock(&self.links));
        tracing::info!(links = links.len(), ?grace, "federation stopping");
        futures_util::future::join_all(links.into_iter().map(|l| l.stop(grace))).await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
