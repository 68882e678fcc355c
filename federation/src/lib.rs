//! PLACEHOLDER — to be replaced by the federation implementation. Public API contract below.

use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// `[federation]`: `[[federation.upstream]]` and `[[federation.link]]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FederationConfig {
    /// Upstream clusters.
    #[serde(default)]
    pub upstream: Vec<toml_placeholder::Table>,
    /// Links.
    #[serde(default)]
    pub link: Vec<toml_placeholder::Table>,
}

mod toml_placeholder {
    /// Any table.
    pub type Table = std::collections::BTreeMap<String, serde_json::Value>;
}

impl FederationConfig {
    /// Every problem, as `field: what; what to do` lines.
    pub fn validate(&self) -> Vec<String> {
        Vec::new()
    }
    /// True when no link is configured.
    pub fn is_empty(&self) -> bool {
        self.link.is_empty()
    }
    /// One line for `setgate check`.
    pub fn summary(&self) -> String {
        format!(
            "{} upstreams, {} links",
            self.upstream.len(),
            self.link.len()
        )
    }
}

/// The running links.
#[derive(Debug)]
pub struct Federation;

impl Federation {
    /// Starts every link.
    pub fn start(_cfg: FederationConfig) -> Federation {
        Federation
    }
    /// `GET /api/links`.
    pub fn status_fn(&self) -> Arc<dyn Fn() -> serde_json::Value + Send + Sync> {
        Arc::new(|| serde_json::json!({ "links": [] }))
    }
    /// Applies a new config.
    pub async fn reload(&self, _cfg: FederationConfig) {}
    /// Stops every link cleanly.
    pub async fn shutdown(self, _grace: Duration) {}
}
