//! [`Federation`]: the running links and shovels, started, reloaded, paused and stopped.

use crate::flow::{FlowHandle, OnError};
use crate::plan::{plans, unit_key, Change, MessagingConfig, UnitKind, UnitPlan};
use crate::status::LinkStatus;
use serde_json::{json, Value};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a link that a reload restarts or removes may take to drain.
const RELOAD_GRACE: Duration = Duration::from_secs(10);
/// Beyond the grace: time to send the last acks and close both connections.
const CLOSE_MARGIN: Duration = Duration::from_secs(5);

/// One running link or shovel.
#[derive(Debug)]
struct RunningUnit {
    plan: UnitPlan,
    flows: Vec<FlowHandle>,
    status: Arc<LinkStatus>,
    /// A stand-in showing the status of a unit that is draining after a reload.
    shadow: bool,
}

impl RunningUnit {
    fn start(plan: UnitPlan) -> RunningUnit {
        let flows: Vec<FlowHandle> = plan
            .flows
            .iter()
            .cloned()
            .map(|f| FlowHandle::spawn(f, OnError::Retry))
            .collect();
        let status = Arc::new(LinkStatus::new(
            &plan.name,
            plan.kind,
            &plan.destination,
            plan.destination_uris.clone(),
            flows.iter().map(|f| f.status.clone()).collect(),
            plan.delete_after,
        ));
        tracing::info!(kind = plan.kind.as_str(), name = %plan.name, flows = flows.len(), "started");
        RunningUnit {
            plan,
            flows,
            status,
            shadow: false,
        }
    }

    /// A paused unit: its status says so, no flow runs.
    fn paused(plan: UnitPlan, old: &LinkStatus) -> RunningUnit {
        let status = Arc::new(LinkStatus::new(
            &plan.name,
            plan.kind,
            &plan.destination,
            plan.destination_uris.clone(),
            old.flows.clone(),
            plan.delete_after,
        ));
        status.paused.store(true, Relaxed);
        for f in &status.flows {
            f.set_paused();
        }
        RunningUnit {
            plan,
            flows: Vec::new(),
            status,
            shadow: false,
        }
    }

    fn shadow(&self) -> RunningUnit {
        RunningUnit {
            plan: self.plan.clone(),
            flows: Vec::new(),
            status: self.status.clone(),
            shadow: true,
        }
    }

    fn key(&self) -> String {
        unit_key(self.plan.kind, &self.plan.name)
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

/// What `POST /api/{links|shovels}/{name}/{action}` asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Stop consuming, drain, keep the unit stopped (what was not confirmed stays upstream).
    Pause,
    /// Start a paused unit again.
    Resume,
    /// Stop cleanly and start again (a completed shovel runs again).
    Restart,
}

impl Control {
    /// Parses `pause`, `resume` or `restart`.
    pub fn parse(s: &str) -> Option<Control> {
        match s {
            "pause" => Some(Control::Pause),
            "resume" => Some(Control::Resume),
            "restart" => Some(Control::Restart),
            _ => None,
        }
    }
}

/// Why a control request was not carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// No link or shovel of that name.
    #[error("no {kind} named \"{name}\"; GET /api/{kind}s lists them")]
    Unknown {
        /// `link` or `shovel`.
        kind: &'static str,
        /// The name asked for.
        name: String,
    },
}

/// The running federation links and shovels.
///
/// The unit list is shared with the status closures handed to the admin server; the `Mutex`
/// is held only to read or swap entries, never across an await. Reloads and control requests
/// are serialized by `changing`, an async lock held while units stop and start.
#[derive(Debug, Clone)]
pub struct Federation {
    units: Arc<Mutex<Vec<RunningUnit>>>,
    changing: Arc<tokio::sync::Mutex<()>>,
}

impl Federation {
    /// Starts every link and shovel on the current tokio runtime. Never fails: a flow that
    /// cannot connect or set up reports why in its status and retries after its
    /// `reconnect_delay`.
    pub fn start(cfg: &MessagingConfig) -> Federation {
        let units = plans(cfg).into_iter().map(RunningUnit::start).collect();
        Federation {
            units: Arc::new(Mutex::new(units)),
            changing: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// A closure returning `{"links": [...]}` for `GET /api/links`; it follows reloads.
    pub fn status_fn(&self) -> Arc<dyn Fn() -> Value + Send + Sync> {
        self.status_of(UnitKind::Link, "links")
    }

    /// A closure returning `{"shovels": [...]}` for `GET /api/shovels`.
    pub fn shovels_status_fn(&self) -> Arc<dyn Fn() -> Value + Send + Sync> {
        self.status_of(UnitKind::Shovel, "shovels")
    }

    fn status_of(&self, kind: UnitKind, key: &'static str) -> Arc<dyn Fn() -> Value + Send + Sync> {
        let units = self.units.clone();
        Arc::new(move || {
            let statuses: Vec<Arc<LinkStatus>> = lock(&units)
                .iter()
                .filter(|u| u.plan.kind == kind)
                .map(|u| u.status.clone())
                .collect();
            json!({ key: statuses.iter().map(|s| s.json()).collect::<Vec<_>>() })
        })
    }

    /// Pauses, resumes or restarts one link or shovel; returns its status after the change.
    pub async fn control(
        &self,
        kind: UnitKind,
        name: &str,
        action: Control,
    ) -> Result<Value, ControlError> {
        let _changing = self.changing.lock().await;
        let key = unit_key(kind, name);
        let unit = {
            let mut units = lock(&self.units);
            let Some(i) = units.iter().position(|u| u.key() == key && !u.shadow) else {
                return Err(ControlError::Unknown {
                    kind: kind.as_str(),
                    name: name.to_string(),
                });
            };
            let shadow = units[i].shadow();
            std::mem::replace(&mut units[i], shadow)
        };
        tracing::info!(kind = kind.as_str(), name, ?action, "control request");
        let plan = unit.plan.clone();
        let old_status = unit.status.clone();
        unit.stop(RELOAD_GRACE).await;
        let next = match action {
            Control::Pause => RunningUnit::paused(plan, &old_status),
            Control::Resume | Control::Restart => RunningUnit::start(plan),
        };
        let status = next.status.json();
        let mut units = lock(&self.units);
        if let Some(slot) = units.iter_mut().find(|u| u.key() == key && u.shadow) {
            *slot = next;
        }
        Ok(status)
    }

    /// Applies a new, validated config with the changes [`crate::diff`] computed for it:
    /// units that restart or stop are stopped cleanly (their unconfirmed messages stay
    /// upstream), new ones start; kept ones keep their connections (and a paused one stays
    /// paused).
    pub async fn apply(&self, cfg: &MessagingConfig, changes: &[Change]) {
        let _changing = self.changing.lock().await;
        let new = plans(cfg);
        let current = std::mem::take(&mut *lock(&self.units));
        let (mut kept, mut stopping) = (Vec::new(), Vec::new());
        for unit in current {
            if changes.contains(&Change::Keep(unit.key())) {
                kept.push(unit);
            } else {
                tracing::info!(name = %unit.plan.name, "stopping for reload");
                stopping.push(unit);
            }
        }
        // While they drain, stopping units still show in the status (with no flows to stop).
        lock(&self.units).extend(
            kept.into_iter()
                .chain(stopping.iter().map(RunningUnit::shadow)),
        );
        futures_util::future::join_all(stopping.into_iter().map(|l| l.stop(RELOAD_GRACE))).await;
        let mut units = lock(&self.units);
        let mut current = std::mem::take(&mut *units);
        current.retain(|l| !l.shadow);
        *units = new
            .into_iter()
            .map(|plan| {
                let key = unit_key(plan.kind, &plan.name);
                match current.iter().position(|l| l.key() == key) {
                    Some(i) => current.remove(i),
                    None => RunningUnit::start(plan),
                }
            })
            .collect();
    }

    /// Stops everything: stop consuming, wait up to `grace` for outstanding confirms, ack the
    /// confirmed messages, close. Whatever was not confirmed stays in the upstream queues.
    pub async fn shutdown(self, grace: Duration) {
        let units = std::mem::take(&mut *lock(&self.units));
        tracing::info!(units = units.len(), ?grace, "links and shovels stopping");
        futures_util::future::join_all(units.into_iter().map(|l| l.stop(grace))).await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
