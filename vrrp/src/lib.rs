//! PLACEHOLDER — to be replaced by the VRRP implementation. Public API contract below.

use serde::Deserialize;
use std::net::IpAddr;
use std::sync::Arc;

/// `[vrrp]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct VrrpConfig {
    /// Interface.
    pub interface: String,
}

impl VrrpConfig {
    /// Every problem.
    pub fn validate(&self) -> Vec<String> {
        Vec::new()
    }
    /// The virtual IP addresses (without prefix length).
    pub fn vip_addrs(&self) -> Vec<IpAddr> {
        Vec::new()
    }
    /// One line for `setgate check`.
    pub fn summary(&self) -> String {
        String::new()
    }
}

/// Start-up failure.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct VrrpError(pub String);

/// A running VRRP instance.
#[derive(Debug)]
pub struct Vrrp;

impl Vrrp {
    /// Starts the instance; `ready` is the proxy's readiness (for `track`).
    pub async fn start(
        _cfg: VrrpConfig,
        _ready: Arc<dyn Fn() -> bool + Send + Sync>,
    ) -> Result<Vrrp, VrrpError> {
        Err(VrrpError("not yet".into()))
    }
    /// `GET /api/vrrp`.
    pub fn status_fn(&self) -> Arc<dyn Fn() -> serde_json::Value + Send + Sync> {
        Arc::new(|| serde_json::json!({}))
    }
    /// Steps down (priority 0 advert if master), removes VIPs.
    pub async fn shutdown(self) {}
}
